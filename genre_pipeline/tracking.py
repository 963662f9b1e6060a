"""The MLflow tracking store as training writes it and the champion's lifecycle reads it: pointing the
process at a store, the experiment, and the names both sides share (the validation metric runs are
compared on, each run's movie ids by split). Which store a data folder uses is ``champion.registry``'s."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import sqlalchemy

DEFAULT_EXPERIMENT = "genre-pipeline"
# Macro-F1 on validation with the thresholds tuned there: what champion selection compares. The
# per-epoch figure at 0.5 thresholds, logged as history, is "epoch_validation_macro_f1".
VALIDATION_METRIC = "validation_macro_f1"
# Each training run's movie ids by split: what the model saw, so that it is never scored on them as new.
TRAINING_MOVIES_ARTIFACT = "data/movie_ids.json"
# How long a write to a sqlite tracking store waits for another process's lock (a second run logging,
# `make mlflow`'s server) before it fails; MLflow's own 20 s is shorter than a busy store can hold it.
LOCK_TIMEOUT_ENV = "GENRE_PIPELINE_TRACKING_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 300.0


def lock_timeout_s() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV) or DEFAULT_LOCK_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{LOCK_TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
    return seconds


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def _wait_longer_for_locks(conn, cursor, statement, parameters, context, executemany) -> None:
    """Every MLflow session on sqlite starts with ``PRAGMA busy_timeout = 20000``: raised right after to
    ``lock_timeout_s()``, still bounded, so that a store held for a minute delays a run, not fails it."""
    if conn.dialect.name == "sqlite" and statement.lstrip().lower().startswith("pragma busy_timeout"):
        cursor.connection.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s() * 1000)}")


def sqlite_uri(db_file: Path) -> str:
    return f"sqlite:///{Path(db_file).resolve()}"


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
