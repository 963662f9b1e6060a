"""Champion against challenger on the same data. ``challenge_champion`` scores the candidate and the
current champion now, through their pyfunc models, on the current validation split (and, for the
record, on the new movies of the test split, which neither trained on), and registers the candidate as
genre-classifier@challenger with both figures as version tags. ``verdict`` applies the promotion rule to
those tags: the promotion check and ``promote_challenger`` (the only code that moves @champion) both
call it, so a worse model cannot reach serving whichever step runs."""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow import MlflowClient

from genre_pipeline import tracking
from genre_pipeline.champion import registry, scoring
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.seen import training_movies, unseen_movies
from genre_pipeline.dataset.labels import OTHERS
from genre_pipeline.models import metrics
from genre_pipeline.options import described
from genre_pipeline.store import DataStore

# The name of the blocking asset check on model_comparison that applies ``challenger_verdict``.
PROMOTION_CHECK = "challenger_beats_champion"


@dataclasses.dataclass(frozen=True)
class PromotionRules:
    """When a candidate replaces the champion; model_comparison's run config is made from these fields."""

    margin: float = described(
        0.0, "The candidate must score more than the champion's validation macro-F1 plus this, both measured now."
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The candidate and the champion measured on the same movies, kept as the challenger's version tags."""

    candidate: str  # the model asset, e.g. stacked_model
    candidate_run_id: str
    candidate_f1: float
    label_set: str
    data: str  # which movies both were scored on
    margin: float
    champion_version: str | None  # None: there was no champion
    champion_model: str | None
    champion_label_set: str | None
    champion_f1: float | None  # None when the champion could not be scored on these movies
    inputs_change: str  # "" when both read the same inputs
    new_movies: str = ""  # the second figure: the test split's movies the champion never saw
    candidate_new_f1: float | None = None
    champion_new_f1: float | None = None

    def tags(self) -> dict[str, str]:
        return {f"promotion.{k}": "" if v is None else str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "Comparison":
        values = {f.name: tags.get(f"promotion.{f.name}") for f in dataclasses.fields(cls)}
        numbers = ("candidate_f1", "margin", "champion_f1", "candidate_new_f1", "champion_new_f1")
        optional = ("champion_version", "champion_model", "champion_label_set")
        for name in numbers:
            values[name] = float(values[name]) if values[name] else None
        for name in optional:
            values[name] = values[name] or None
        return cls(**values)

    def champion_name(self) -> str:
        return f"champion v{self.champion_version} ({self.champion_model})"

    def figures(self) -> str:
        """Both figures on the same data, named."""
        text = (
            f"validation macro-F1 on {self.data}: candidate {self.candidate} {self.candidate_f1:.4f}, "
            f"{self.champion_name()} {self.champion_f1:.4f}"
        )
        if self.new_movies and self.candidate_new_f1 is not None and self.champion_new_f1 is not None:
            text += (
                f"; on {self.new_movies}: candidate {self.candidate_new_f1:.4f}, champion {self.champion_new_f1:.4f}"
            )
        return text

    def verdict(self) -> tuple[bool, str]:
        """Whether the candidate may become the champion, and why, in words naming both models, both
        figures and the data. A champion of another label set is replaced, and the decision says so."""
        inputs = f" ({self.inputs_change})" if self.inputs_change else ""
        if self.champion_version is None:
            return True, f"candidate {self.candidate} ({self.candidate_f1:.4f} on {self.data}): there was no champion"
        if self.champion_label_set != self.label_set:
            return True, (
                f"label set changes from {self.champion_label_set!r} ({self.champion_name()}) to {self.label_set!r}: "
                f"the champion cannot be scored on the new labels, so candidate {self.candidate} "
                f"({self.candidate_f1:.4f} on {self.data}) replaces it{inputs}"
            )
        if self.champion_f1 is None:
            return True, (
                f"{self.champion_name()} predicts other classes than the current label set, so it cannot be "
                f"scored on {self.data}; candidate {self.candidate} {self.candidate_f1:.4f} replaces it{inputs}"
            )
        # Strictly better: a tie keeps the serving model (the same figures would only churn the registry).
        if self.candidate_f1 > self.champion_f1 + self.margin:
            return True, f"candidate wins: {self.figures()} (margin {self.margin:g}){inputs}"
        return False, f"champion kept: {self.figures()}; the candidate needs more than champion + {self.margin:g}"


@dataclasses.dataclass(frozen=True)
class Challenge:
    comparison: Comparison | None  # None when the candidate is the champion's run already
    challenger_version: str | None
    decision: str


def _inputs(predictor: GenrePredictor) -> str:
    parts = ["text"]
    parts += ["title"] if predictor.reads_titles else []
    parts += ["metadata"] if predictor.reads_metadata else []
    parts += ["poster"] if predictor.uses_posters else []
    return "+".join(parts)


def challenge_champion(store: DataStore, name: str, report: dict, label_set: str, rules: PromotionRules) -> Challenge:
    """Score the candidate ``name`` (its training report gives the model and run) and the current
    champion on the same movies, and register the candidate as @challenger with the comparison as
    tags. A candidate that is the champion's run already is not registered again."""
    client = MlflowClient()
    before = registry.current_champion(client)
    if before is not None and before["run_id"] == report["run_id"]:
        return Challenge(None, None, f"champion v{before['version']} ({name}) is this run's model already: kept")
    compared = _compared_already(client, report["run_id"], before)
    if compared is not None:
        return compared
    validation = scoring.split_movies(store, label_set, "validation")
    data = validation.describe("validation")
    # Both models take the embedding assets' vectors of unchanged texts and posters: scoring them encodes
    # only what the cache lacks.
    known = scoring.store_embeddings(store)
    candidate = scoring.reusing_store_embeddings(GenrePredictor.from_model_uri(report["model_uri"]), known)
    champion_fields = dict(champion_version=None, champion_model=None, champion_label_set=None, champion_f1=None)
    inputs_change, new = "", {}
    if before is not None:
        champion = scoring.reusing_store_embeddings(
            GenrePredictor.from_registry(report["tracking_uri"], before["version"]), known
        )
        champion_fields = dict(
            champion_version=str(before["version"]),
            champion_model=champion.info["model"],
            champion_label_set=champion.info["label_set"],
        )
        if champion.info["label_set"] == label_set:
            shared, change = _shared_classes(candidate, champion)
            if change:  # a refresh added or dropped a genre: both are scored on the genres both predict
                validation, data = scoring.in_classes(store, validation, shared), f"{data}, {change}"
            champion_fields["champion_f1"] = scoring.macro_f1_on(champion, validation)
            new = _on_new_test_movies(store, label_set, shared, candidate, champion)
        if _inputs(champion) != _inputs(candidate):
            inputs_change = f"inputs change from {_inputs(champion)} to {_inputs(candidate)}"
    candidate_f1 = scoring.macro_f1_on(candidate, validation)
    comparison = Comparison(
        candidate=name,
        candidate_run_id=report["run_id"],
        candidate_f1=candidate_f1,
        label_set=label_set,
        data=data,
        margin=rules.margin,
        inputs_change=inputs_change,
        **champion_fields,
        **new,
    )
    _, decision = comparison.verdict()
    version = mlflow.register_model(
        report["model_uri"],
        registry.REGISTERED_MODEL,
        tags={
            **comparison.tags(),
            "label_set": label_set,
            tracking.VALIDATION_METRIC: f"{candidate_f1:.6f}",
            "validation_data": comparison.data,
            "model": name,
            "run_id": report["run_id"],
            "decision": decision,
        },
    )
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHALLENGER_ALIAS, version.version)
    return Challenge(comparison, str(version.version), decision)


def _compared_already(client: MlflowClient, run_id: str, champion: dict | None) -> Challenge | None:
    """The challenge of a version of the same run already compared with the same champion (a rerun with
    unchanged models): its verdict stands and nothing is registered again. A version no promotion has
    decided on yet (a run killed between registering it and moving the alias, or before champion_model
    ran) is @challenger again, so that the promotion still happens."""
    held = str(champion["version"]) if champion else None
    for version in client.search_model_versions(f"name='{registry.REGISTERED_MODEL}' and run_id='{run_id}'"):
        tags = dict(version.tags)
        comparison = Comparison.from_tags(tags)
        if comparison.champion_version != held:
            continue
        decision = tags.get("decision", comparison.verdict()[1])
        if "promoted" not in tags:
            client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHALLENGER_ALIAS, version.version)
            return Challenge(
                comparison, str(version.version), f"v{version.version} of this run, compared already: {decision}"
            )
        return Challenge(None, None, f"v{version.version} of this run was compared already: {decision}")
    return None


def _shared_classes(candidate: GenrePredictor, champion: GenrePredictor) -> tuple[list[str], str]:
    """The genres both predict, and "" when they predict the same ones or else what changed. Others is
    left out when the genres differ: it then stands for different genres in each."""
    if list(candidate.classes) == list(champion.classes):
        return list(candidate.classes), ""
    shared = [c for c in candidate.classes if c in champion.classes and c != OTHERS]
    added = [c for c in candidate.classes if c not in champion.classes]
    dropped = [c for c in champion.classes if c not in candidate.classes]
    change = f"on the {len(shared)} genres both predict (the label set's genres changed"
    change += f"; added {', '.join(added)}" if added else ""
    change += f"; dropped {', '.join(dropped)}" if dropped else ""
    return shared, change + ")"


def _on_new_test_movies(store: DataStore, label_set: str, classes: list[str], candidate, champion) -> dict:
    """Both models on the test split's movies that the champion never saw (neither trained on them)."""
    seen = training_movies(champion.info["run_id"])
    if seen is None:
        return {}
    movies = unseen_movies(store, label_set, seen, classes, split="test")
    if len(movies.ids) == 0:
        return {}
    too_few = metrics.not_measured(len(movies.ids))
    if too_few:  # a handful of movies would decide the figure: recorded as not measured
        return dict(new_movies=f"the test split's movies newer than the champion's data: {too_few}")
    return dict(
        new_movies=f"the test split's {len(movies.ids):,} movies newer than the champion's data",
        candidate_new_f1=scoring.macro_f1_on(candidate, movies),
        champion_new_f1=scoring.macro_f1_on(champion, movies),
    )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the promotion rule says of the challenger. ``promote`` False with ``failure`` False is a kept
    champion, an outcome; ``failure`` is a comparison that cannot be trusted (the champion moved since)."""

    challenger: dict | None  # current_champion's answer for @challenger; None when there is none
    promote: bool
    decision: str
    failure: bool = False


def challenger_verdict(client: MlflowClient) -> Verdict:
    """The promotion rule applied to the challenger: it may not become the champion when it lost, nor
    when the champion moved since it was compared (a failure: compare again)."""
    challenger = registry.current_champion(client, registry.CHALLENGER_ALIAS)
    if challenger is None:
        return Verdict(None, False, "no challenger: nothing to promote")
    comparison = Comparison.from_tags(challenger["tags"])
    champion = registry.current_champion(client)
    now = str(champion["version"]) if champion else None
    if now == str(challenger["version"]):  # promoted by a run that stopped before removing @challenger
        return Verdict(
            challenger, True, f"challenger v{now} is the champion already: {challenger['tags'].get('decision')}"
        )
    if now != comparison.champion_version:
        return Verdict(
            challenger,
            False,
            f"challenger v{challenger['version']} was compared with champion v{comparison.champion_version}, "
            f"but the champion is v{now} now: compare again",
            failure=True,
        )
    passed, decision = comparison.verdict()
    return Verdict(challenger, passed, f"challenger v{challenger['version']}: {decision}")


def promote_challenger(client: MlflowClient) -> tuple[bool, str]:
    """Move @champion to the challenger when its verdict allows it; the challenger alias is removed
    either way, and the decision is kept as tags of its version (``promoted`` true or false). Returns
    whether it moved, and why."""
    verdict = challenger_verdict(client)
    if verdict.challenger is None:
        champion = registry.current_champion(client)
        held = f"v{champion['version']} ({champion['tags'].get('model')})" if champion else "none"
        return False, f"champion {held} kept: {verdict.decision}"
    version = str(verdict.challenger["version"])
    # In this order, a run stopped between two calls leaves a registry the rerun finishes: the decision
    # first, then @champion, and @challenger removed last (challenger_verdict knows a challenger that is
    # the champion already).
    if str(verdict.challenger["tags"].get("promoted")) != str(verdict.promote).lower():
        client.set_model_version_tag(registry.REGISTERED_MODEL, version, "decision", verdict.decision)
        client.set_model_version_tag(registry.REGISTERED_MODEL, version, "promoted", str(verdict.promote).lower())
    if verdict.promote:
        client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, version)
    client.delete_registered_model_alias(registry.REGISTERED_MODEL, registry.CHALLENGER_ALIAS)
    return verdict.promote, verdict.decision
