"""The model registry: where training runs and registered models are kept (the tracking URI), the
registered model's name, the champion alias and its lookup, which model is a candidate, and promotion.
It imports no training code: serving, ``predict`` and ``evaluate`` read the champion through it."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline import settings
from genre_pipeline.store import DataStore

REGISTERED_MODEL = "genre-classifier"
CHAMPION_ALIAS = "champion"
# The candidate model_comparison registered last, waiting for the promotion check's verdict.
CHALLENGER_ALIAS = "challenger"
DEFAULT_EXPERIMENT = "genre-pipeline"
# Macro-F1 on validation with the thresholds tuned there: what champion selection compares. The
# per-epoch figure at 0.5 thresholds, logged as history, is "epoch_validation_macro_f1".
VALIDATION_METRIC = "validation_macro_f1"
# What can be the champion: every model that predicts from an overview alone (not the poster-only one).
CHAMPION_CANDIDATES = ("baseline_model", "text_model", "fusion_model", "stacked_model")
# Each training run's movie ids by split: what the model saw, so that it is never scored on them as new.
TRAINING_MOVIES_ARTIFACT = "data/movie_ids.json"


class NoChampion(RuntimeError):
    """No model is registered as genre-classifier@champion in the tracking store."""


def sqlite_uri(db_file: Path) -> str:
    return f"sqlite:///{Path(db_file).resolve()}"


def default_tracking_uri(store: DataStore) -> str:
    """``GENRE_PIPELINE_TRACKING_URI`` (a shared server or database: docs/scale-out.md), else the
    data folder's sqlite file. A database password belongs in ``PGPASSWORD``, not in the URI, which
    reports and metadata show."""
    return settings.tracking_uri_override() or sqlite_uri(store.mlflow_db)


def use_store(tracking_uri: str) -> None:
    """Point this process's MLflow at the store: its runs and its model registry."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def use_tracking(tracking_uri: str, experiment: str, artifact_root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists with artifacts under ``artifact_root``."""
    use_store(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        # A sqlite store would otherwise put artifacts in ./mlartifacts of whatever the cwd is.
        experiment_id = mlflow.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())
    else:
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def current_champion(client: MlflowClient, alias: str = CHAMPION_ALIAS) -> dict | None:
    """The version ``alias`` points at (version, run_id, tags), or None."""
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException:
        return None
    return {"version": version.version, "run_id": version.run_id, "tags": dict(version.tags)}


def training_movies(run_id: str) -> dict[str, list[int]] | None:
    """The movie ids by split that the run ``run_id`` trained, tuned and tested on (the process's store),
    or None for a run logged before they were recorded."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_MOVIES_ARTIFACT}")
    except (MlflowException, OSError):
        return None


def seen_ids(training_movies: dict[str, list[int]]) -> set[int]:
    """Every movie a training run knew (``training_movies``' ids of every split): trained on, tuned on
    or tested on."""
    return {int(i) for ids in training_movies.values() for i in ids}


def champion_version(client: MlflowClient, tracking_uri: str) -> str:
    """The version number genre-classifier@champion points at, or NoChampion."""
    champion = current_champion(client)
    if champion is None:
        raise NoChampion(
            f"no {REGISTERED_MODEL}@{CHAMPION_ALIAS} in {tracking_uri}: materialize the model assets first (make run)"
        )
    return str(champion["version"])


def choose_candidate(validation_macro_f1: dict[str, float]) -> str:
    """The candidate with the best validation macro-F1, from every model's figure by name."""
    return max(CHAMPION_CANDIDATES, key=lambda name: validation_macro_f1[name])
