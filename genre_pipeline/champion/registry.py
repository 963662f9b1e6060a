"""The registered model: the tracking store a data folder uses, the model's name, the champion and
challenger aliases and their lookup, and which models may be a candidate. Moving @champion is
``promotion``'s."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline import settings
from genre_pipeline.store import DataStore
from genre_pipeline.tracking import sqlite_uri

REGISTERED_MODEL = "genre-classifier"
CHAMPION_ALIAS = "champion"
# The candidate model_comparison registered last, waiting for the promotion check's verdict.
CHALLENGER_ALIAS = "challenger"
# What can be the champion: every model that predicts from an overview alone (not the poster-only one).
CHAMPION_CANDIDATES = ("baseline_model", "text_model", "fusion_model", "stacked_model")


def default_tracking_uri(store: DataStore) -> str:
    """``GENRE_PIPELINE_TRACKING_URI`` (a shared server or database: docs/scale-out.md), else the
    data folder's sqlite file. A database password belongs in ``PGPASSWORD``, not in the URI, which
    reports and metadata show."""
    return settings.tracking_uri_override() or sqlite_uri(store.mlflow_db)


class NoChampion(RuntimeError):
    """No model is registered as genre-classifier@champion in the tracking store."""


def current_champion(client: MlflowClient, alias: str = CHAMPION_ALIAS) -> dict | None:
    """The version ``alias`` points at (version, run_id, tags), or None."""
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException:
        return None
    return {"version": version.version, "run_id": version.run_id, "tags": dict(version.tags)}


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
