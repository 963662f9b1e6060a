"""The model registry: where training runs and registered models are kept (the tracking URI), the
registered model's name, the champion alias and its lookup, which model is a candidate, and promotion.
It imports no training code: serving, ``predict`` and ``evaluate`` read the champion through it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline import settings
from genre_pipeline.options import described
from genre_pipeline.store import DataStore

REGISTERED_MODEL = "genre-classifier"
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "genre-pipeline"
# Macro-F1 on validation with the thresholds tuned there: what champion selection compares. The
# per-epoch figure at 0.5 thresholds, logged as history, is "epoch_validation_macro_f1".
VALIDATION_METRIC = "validation_macro_f1"
# What can be the champion: every model that predicts from an overview alone (not the poster-only one).
CHAMPION_CANDIDATES = ("baseline_model", "text_model", "fusion_model", "stacked_model")


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


def current_champion(client: MlflowClient) -> dict | None:
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    except MlflowException:
        return None
    return {"version": version.version, "run_id": version.run_id, "tags": dict(version.tags)}


@dataclasses.dataclass(frozen=True)
class PromotionRules:
    """When a candidate replaces the champion; model_comparison's run config is made from these fields."""

    margin: float = described(
        0.0, "The candidate must beat the champion's validation macro-F1, both measured now, by more than this."
    )


@dataclasses.dataclass(frozen=True)
class Contender:
    """The candidate, with its macro-F1 measured now on the data ``promote_if_better`` names."""

    name: str  # the model asset, e.g. stacked_model
    run_id: str
    macro_f1: float


def promote_if_better(
    model_uri: str,
    candidate: Contender,
    champion: dict | None,
    champion_f1: float | None,
    label_set: str,
    data: str,
    rules: PromotionRules,
) -> tuple[bool, str]:
    """Register the candidate and make it the champion when its macro-F1 beats the current champion's by
    more than ``rules.margin``, both measured now on the same movies (``data`` says which): never a figure
    stored when a model was registered, which came from other data. A champion that cannot be scored on
    this data (another label set, other classes) is replaced, and the decision says why. Returns whether
    it was promoted and the decision in words, naming both models and both figures. ``champion`` is
    ``current_champion``'s answer, read by the caller before scoring it."""
    if champion is not None and champion["run_id"] == candidate.run_id:
        return False, f"kept champion v{champion['version']} ({candidate.name}): it is this run's model already"
    if champion is None:
        why = "there was no champion"
    else:
        held = f"champion v{champion['version']} ({champion['tags'].get('model', '?')})"
        if champion["tags"].get("label_set") != label_set:
            why = f"{held} was trained on label set {champion['tags'].get('label_set')!r}, the run on {label_set!r}"
        elif champion_f1 is None:
            why = f"{held} predicts other classes than the current label set: it cannot be scored on {data}"
        elif not candidate.macro_f1 > champion_f1 + rules.margin:
            return False, (
                f"kept {held}: validation macro-F1 on {data} {champion_f1:.4f}, candidate {candidate.name} "
                f"{candidate.macro_f1:.4f} (it must be higher by more than {rules.margin:g})"
            )
        else:
            why = (
                f"candidate {candidate.name} scored validation macro-F1 {candidate.macro_f1:.4f} on {data}, "
                f"{held} {champion_f1:.4f}"
            )
    version = mlflow.register_model(
        model_uri,
        REGISTERED_MODEL,
        tags={
            "label_set": label_set,
            VALIDATION_METRIC: f"{candidate.macro_f1:.6f}",
            "validation_data": data,
            "model": candidate.name,
            "run_id": candidate.run_id,
        },
    )
    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    return True, f"registered {REGISTERED_MODEL} v{version.version} ({candidate.name}) as @{CHAMPION_ALIAS}: {why}"


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
