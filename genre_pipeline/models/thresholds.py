"""Decision rules: thresholds tuned on validation by the rule that held up best on validation movies it
was not tuned on, and the original study's top-3 ≥ 0.3 rule."""

from __future__ import annotations

import dataclasses

import numpy as np

from genre_pipeline.models.metrics import f1_per_genre

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
TOP3_RULE = {"k": 3, "minimum": 0.3}
# How thresholds are set from validation predictions. per_genre: each genre's F1-best threshold; shared: the one
# threshold with the best macro-F1; halfway: each genre halfway between the two; half_best_f1: each genre at half
# its best F1, where the F1-best threshold of calibrated probabilities lies (Lipton et al. 2014), which reads each
# genre's movies through one figure only. Which one holds up depends on the model: per-genre thresholds overfit
# the stack's validation movies, whose boosted trees give calibrated probabilities (docs/models.md).
THRESHOLD_RULES = ("per_genre", "halfway", "shared", "half_best_f1")


def _thresholds_of_every_rule(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each rule's thresholds from these predictions, all from one table of F1 per genre and threshold of the
    grid; 0.5 for a genre none of them has."""
    f1 = f1_per_genre(labels.astype(bool)[:, :, None], probabilities[:, :, None] >= THRESHOLD_GRID[None, None, :])
    present = labels.any(axis=0)
    per_genre = THRESHOLD_GRID[f1.argmax(axis=1)]
    shared = THRESHOLD_GRID[f1[present].mean(axis=0).argmax()] if present.any() else 0.5
    by_rule = {
        "per_genre": per_genre,
        "halfway": (per_genre + shared) / 2,
        "shared": np.full(len(f1), shared),
        "half_best_f1": np.clip(f1.max(axis=1) / 2, THRESHOLD_GRID[0], THRESHOLD_GRID[-1]),
    }
    return {rule: np.where(present, by_rule[rule], 0.5) for rule in THRESHOLD_RULES}


def rule_thresholds(rule: str, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The thresholds ``rule`` (one of THRESHOLD_RULES) sets from these predictions; 0.5 for a genre none of
    them has."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}: use one of {', '.join(THRESHOLD_RULES)}")
    return _thresholds_of_every_rule(probabilities, labels)[rule]


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    rule: str
    thresholds: np.ndarray  # the rule applied to every validation movie
    held_out_macro_f1: dict[str, float]  # per rule: tuned on half the movies, macro-F1 on the other half, averaged

    def figures(self) -> dict:
        return {
            "threshold_rule": self.rule,
            **{f"threshold_rule_held_out_macro_f1_{rule}": f1 for rule, f1 in self.held_out_macro_f1.items()},
        }


def choose_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, *, repeats: int = 10, seed: int = 0
) -> ThresholdChoice:
    """Thresholds by the rule whose thresholds, tuned on a random half of these (validation) movies, scored the
    best macro-F1 on the other half, over ``repeats`` splits both ways (a tie keeps the earlier rule of
    THRESHOLD_RULES); then tuned by that rule on all of them."""
    rng = np.random.default_rng(seed)
    scores = {rule: [] for rule in THRESHOLD_RULES}
    for _ in range(repeats if len(labels) >= 2 else 0):
        half = rng.permutation(len(labels)) < len(labels) // 2
        for tuned, scored in ((half, ~half), (~half, half)):
            truth = labels[scored].astype(bool)
            for rule, thresholds in _thresholds_of_every_rule(probabilities[tuned], labels[tuned]).items():
                scores[rule].append(float(f1_per_genre(truth, probabilities[scored] >= thresholds).mean()))
    held_out = {rule: float(np.mean(figures)) for rule, figures in scores.items() if figures}
    rule = max(held_out, key=held_out.get) if held_out else THRESHOLD_RULES[0]
    return ThresholdChoice(rule, rule_thresholds(rule, probabilities, labels), held_out)


def apply_thresholds(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return (probabilities >= thresholds[None, :]).astype(np.uint8)


def top3_rule(probabilities: np.ndarray, k: int = TOP3_RULE["k"], minimum: float = TOP3_RULE["minimum"]) -> np.ndarray:
    """The original study's decision rule: the top k genres whose probability is at least ``minimum``."""
    predictions = np.zeros_like(probabilities, dtype=np.uint8)
    top = np.argsort(-probabilities, axis=1)[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    predictions[rows, top] = (probabilities[rows, top] >= minimum).astype(np.uint8)
    return predictions
