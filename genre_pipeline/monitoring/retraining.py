"""The retraining gate: retraining pays when enough labelled movies are new since the models last
trained (a count, or a share of what they trained on), a drift check newly failed, or the training setup
or code changed. What the last training knew is kept as a ``RetrainingState`` in the data folder."""

from __future__ import annotations

import dataclasses

from genre_pipeline.monitoring.new_movies import NewMoviesRecord
from genre_pipeline.options import described
from genre_pipeline.store import DataStore, content_fingerprint


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


@dataclasses.dataclass(frozen=True)
class RetrainingState:
    """What the models last trained on: the labelled movies, the setup's fingerprint (its parameters and
    the training code) and the drift checks failing then."""

    ids: list[int]
    setup: str
    failed_drift: list[str]

    @property
    def version(self) -> str:
        """The model assets' data version: it changes only when they retrain."""
        return content_fingerprint([self.ids, self.setup])

    @classmethod
    def load(cls, store: DataStore) -> "RetrainingState | None":
        state = store.read_json(store.retraining_state_file, None)
        return None if state is None else cls(state["ids"], state["setup"], state.get("failed_drift", []))

    def save(self, store: DataStore) -> None:
        store.write_json(store.retraining_state_file, {**dataclasses.asdict(self), "version": self.version})


def setup_fingerprint(run_params: dict, training_code: str) -> str:
    """The training setup as the gate compares it: the run parameters (the device left out: the same
    setup trains on a CPU or a GPU worker) and the training code's fingerprint."""
    return content_fingerprint({**{k: v for k, v in run_params.items() if k != "device"}, "code": training_code})


@dataclasses.dataclass(frozen=True)
class GateOutcome:
    decision: RetrainDecision
    state: RetrainingState  # the new state when the models retrain, else the last one
    new_labelled: int
    trained_on: int


def retraining_gate(store: DataStore, labelled: set[int], setup: str, rules: RetrainRules) -> GateOutcome:
    """Decide on the data folder's ``labelled`` movies and the current ``setup`` (``setup_fingerprint``)
    against the last training's state and the latest new-movies record; a decision to retrain saves the
    new state."""
    last = RetrainingState.load(store)
    failed = NewMoviesRecord.load(store).failed_drift()
    known = set(last.ids) if last else set()
    failing_then = set(last.failed_drift) if last else set()
    decision = decide(
        new_labelled=len(labelled - known),
        trained_on=len(known) if last else None,
        failed_drift=sorted(set(failed) - failing_then),
        still_failing=sorted(set(failed) & failing_then),
        setup_changed=last is not None and last.setup != setup,
        rules=rules,
    )
    state = last
    if decision.retrain:
        state = RetrainingState(sorted(labelled), setup, failed)
        state.save(store)
    return GateOutcome(decision, state, len(labelled - known), len(known))
