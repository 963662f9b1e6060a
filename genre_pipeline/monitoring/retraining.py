"""When retraining pays: enough new labelled movies since the models last trained (a count, or a share
of what they trained on), a failed drift check, or a change of the training setup or code."""

from __future__ import annotations

import dataclasses

from genre_pipeline.options import described


@dataclasses.dataclass(frozen=True)
class RetrainRules:
    """The retraining gate's settings. The defaults suit a daily refresh of the real catalog: a day
    brings tens to a few hundred labelled movies, so the models retrain every few days to weeks, not
    on every changed tagline."""

    min_new_labelled: int = described(
        500, "Retrain when at least this many labelled movies are new since the last training."
    )
    min_new_fraction: float = described(
        0.2, "... or when the new labelled movies are at least this share of the movies the models last trained on."
    )
    on_drift: bool = described(True, "Retrain when a drift check of the champion's new movies failed.")


@dataclasses.dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: list[str]  # why it retrains, or why not

    @property
    def text(self) -> str:
        return ("retrain: " if self.retrain else "no retraining: ") + "; ".join(self.reasons)


def decide(
    *,
    new_labelled: int,
    trained_on: int | None,
    failed_drift: list[str],
    still_failing: list[str],
    setup_changed: bool,
    rules: RetrainRules,
) -> RetrainDecision:
    """Whether the models retrain. ``trained_on`` is how many movies the last training knew (None: the
    models never trained); ``failed_drift`` names the drift checks that failed since it, and
    ``still_failing`` those that already failed when it trained (retraining again on the same kind of
    data cannot clear them); ``setup_changed`` says whether the label set, the encoders or the training
    code differ from the last training's."""
    if trained_on is None:
        return RetrainDecision(True, ["the models have not trained yet"])
    reasons = []
    share = new_labelled / max(trained_on, 1)
    if new_labelled >= rules.min_new_labelled:
        reasons.append(f"{new_labelled} new labelled movies >= min_new_labelled {rules.min_new_labelled}")
    elif new_labelled and share >= rules.min_new_fraction:
        reasons.append(
            f"{new_labelled} new labelled movies are {share:.0%} of the {trained_on} trained on "
            f">= min_new_fraction {rules.min_new_fraction:.0%}"
        )
    if failed_drift and rules.on_drift:
        reasons.append("drift checks failed: " + ", ".join(failed_drift))
    if setup_changed:
        reasons.append("the training setup or code changed")
    if reasons:
        return RetrainDecision(True, reasons)
    return RetrainDecision(
        False,
        [
            f"{new_labelled} new labelled movies ({share:.0%} of the {trained_on} trained on) < "
            f"min_new_labelled {rules.min_new_labelled} and min_new_fraction {rules.min_new_fraction:.0%}",
            _drift_note(failed_drift, still_failing),
            "setup unchanged",
        ],
    )


def _drift_note(failed: list[str], still_failing: list[str]) -> str:
    if failed:
        return "drift ignored (on_drift is off): " + ", ".join(failed)
    if still_failing:
        return "drift checks failing already when the models last trained: " + ", ".join(still_failing)
    return "no drift check failed"
