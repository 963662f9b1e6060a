"""Champion against challenger on the same data: the candidate and the current champion scored now,
through their pyfunc models, on the current validation split, and the registry's promotion rule
applied to those two figures."""

from __future__ import annotations

import dataclasses

from mlflow import MlflowClient

from genre_pipeline.models import registry, scoring
from genre_pipeline.models.predictor import GenrePredictor
from genre_pipeline.store import DataStore


@dataclasses.dataclass(frozen=True)
class Challenge:
    candidate: registry.Contender
    champion_before: dict | None  # current_champion's answer before the decision
    champion_f1: float | None  # the champion's macro-F1 on the same movies; None when it was not scored
    data: str  # which movies both were scored on
    promoted: bool
    decision: str


def challenge_champion(
    store: DataStore, name: str, report: dict, label_set: str, rules: registry.PromotionRules
) -> Challenge:
    """Score the candidate ``name`` (its training report gives the model and run) and the current
    champion on the current validation split, and promote the candidate if it wins by the rules. A
    champion that is the candidate's run, or of another label set, is not scored."""
    validation = scoring.split_movies(store, label_set, "validation")
    f1 = scoring.macro_f1_on(GenrePredictor.from_model_uri(report["model_uri"]), validation)
    candidate = registry.Contender(name, report["run_id"], f1)
    before = registry.current_champion(MlflowClient())
    champion_f1 = None
    if before is not None and before["run_id"] != candidate.run_id and before["tags"].get("label_set") == label_set:
        champion = GenrePredictor.from_registry(report["tracking_uri"], before["version"])
        champion_f1 = scoring.macro_f1_on(champion, validation)
    data = validation.describe("validation")
    promoted, decision = registry.promote_if_better(
        report["model_uri"], candidate, before, champion_f1, label_set, data, rules
    )
    return Challenge(candidate, before, champion_f1, data, promoted, decision)
