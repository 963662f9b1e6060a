"""MLflow: one run per trained model in a sqlite tracking store, and the champion in the registry."""

from __future__ import annotations

import contextlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

REGISTERED_MODEL = "genre-classifier"
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "genre-pipeline"
_PINNED = ("torch", "torchvision", "transformers", "numpy", "scikit-learn", "pillow", "mlflow")


def sqlite_uri(db_file: Path) -> str:
    return f"sqlite:///{Path(db_file).resolve()}"


def code_version() -> str:
    """The git commit of the working tree (with +dirty), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return metadata.version("genre_pipeline")


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in _PINNED]


def use_tracking(tracking_uri: str, experiment: str, artifact_root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists with artifacts under ``artifact_root``."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        # A sqlite store would otherwise put artifacts in ./mlartifacts of whatever the cwd is.
        experiment_id = mlflow.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())
    else:
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def training_run(run_name: str, params: dict, tags: dict | None = None):
    """An MLflow run with the full config as params; yields the run."""
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in params.items()}
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
        yield run


def log_history(history: list[dict], prefix: str = "") -> None:
    for record in history:
        step = int(record["epoch"])
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in record.items() if k != "epoch"}, step=step)


def log_test_metrics(summary: dict, prefix: str = "test_") -> None:
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in summary.items() if v == v})  # drop NaN


def log_torch_model(model, input_example: np.ndarray, name: str = "model"):
    """Log the head as a torch.export program (MLflow's pt2 format: loading runs no pickled code),
    traced in inference mode."""
    import torch

    model.eval()
    with torch.inference_mode():
        output = model(torch.from_numpy(input_example)).numpy()
    return mlflow.pytorch.log_model(
        model,
        name=name,
        signature=infer_signature(input_example, output),
        input_example=input_example,
        pip_requirements=pip_requirements(),
    )


def log_sklearn_model(model, input_example: list[str], name: str = "model"):
    import mlflow.sklearn

    output = model.predict_proba(np.asarray(input_example, dtype=object))
    return mlflow.sklearn.log_model(
        model,
        name=name,
        signature=infer_signature(np.asarray(input_example), output),
        input_example=input_example,
        pip_requirements=pip_requirements(),
    )


def current_champion(client: MlflowClient) -> dict | None:
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    except MlflowException:
        return None
    return {"version": version.version, "run_id": version.run_id, "tags": dict(version.tags)}


def promote_if_better(
    model_uri: str, run_id: str, validation_macro_f1: float, label_set: str, model_name: str
) -> tuple[bool, str]:
    """Register the model and make it the champion when it beats the current one on validation macro-F1
    for the same label set (a champion of another label set is replaced: the label set is config)."""
    client = MlflowClient()
    champion = current_champion(client)
    if champion is not None and champion["tags"].get("label_set") == label_set:
        best = float(champion["tags"].get("validation_macro_f1", "nan"))
        if not validation_macro_f1 > best:
            return (
                False,
                f"kept champion v{champion['version']} (validation macro-F1 {best:.4f} >= {validation_macro_f1:.4f})",
            )
    version = mlflow.register_model(
        model_uri,
        REGISTERED_MODEL,
        tags={
            "label_set": label_set,
            "validation_macro_f1": f"{validation_macro_f1:.6f}",
            "model": model_name,
            "run_id": run_id,
        },
    )
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    return True, f"registered {REGISTERED_MODEL} v{version.version} as @{CHAMPION_ALIAS}"
