"""The plain monitoring rules: when retraining pays, what the drift figures say, the bootstrap interval,
and the promotion rule that moves @champion."""

import numpy as np
import pytest

from genre_pipeline.champion.promotion import Comparison
from genre_pipeline.models import metrics
from genre_pipeline.monitoring import drift, retraining
from genre_pipeline.monitoring.new_movies import NewMoviesRecord
from genre_pipeline.store import DataStore

RULES = retraining.RetrainRules(min_new_labelled=500, min_new_fraction=0.2)


def decide(**options):
    defaults = dict(new_labelled=0, trained_on=10_000, failed_drift=[], still_failing=[], setup_changed=False)
    return retraining.decide(**{**defaults, **options}, rules=RULES)


def test_retraining_pays_for_enough_new_movies_new_drift_or_a_new_setup_and_not_otherwise():
    assert decide(trained_on=None).retrain
    assert not decide(new_labelled=499).retrain
    assert decide(new_labelled=500).retrain
    assert decide(new_labelled=30, trained_on=100).retrain  # 30% of a small set
    assert not decide(new_labelled=19, trained_on=100).retrain
    assert decide(failed_drift=["language_shift"]).retrain
    assert not retraining.decide(
        new_labelled=0,
        trained_on=100,
        failed_drift=["language_shift"],
        still_failing=[],
        setup_changed=False,
        rules=retraining.RetrainRules(on_drift=False),
    ).retrain
    assert decide(setup_changed=True).retrain
    kept = decide(new_labelled=3, still_failing=["poster_availability_shift"])
    assert not kept.retrain
    assert "failing already when the models last trained: poster_availability_shift" in kept.text


def test_the_retraining_gate_keeps_its_state_in_the_data_folder_and_retrains_on_what_is_new(tmp_path):
    store = DataStore(tmp_path / "data")
    rules = retraining.RetrainRules(min_new_labelled=3, min_new_fraction=1.0)
    first = retraining.retraining_gate(store, {1, 2, 3, 4}, "setup-a", rules)
    assert first.decision.retrain and retraining.RetrainingState.load(store) == first.state
    assert first.state == retraining.RetrainingState([1, 2, 3, 4], "setup-a", [])
    # Two new movies: not enough; the state, and so the models' data version, stays.
    again = retraining.retraining_gate(store, {1, 2, 3, 4, 5, 6}, "setup-a", rules)
    assert not again.decision.retrain and again.state.version == first.state.version
    assert (again.new_labelled, again.trained_on) == (2, 4)
    # A drift check that failed in the latest record, or another setup, retrains.
    failed = drift.DriftFigure("language_shift", 0.5, 0.15, True, "fr: 0% in training, 50% new")
    NewMoviesRecord([5, 6], None, [failed]).save(store)
    assert NewMoviesRecord.load(store).failed_drift() == ["language_shift"]
    drifted = retraining.retraining_gate(store, {1, 2, 3, 4, 5, 6}, "setup-a", rules)
    assert drifted.decision.retrain and drifted.state.failed_drift == ["language_shift"]
    assert drifted.state.version != first.state.version
    # Still failing after the models retrained on it: not again.
    assert not retraining.retraining_gate(store, {1, 2, 3, 4, 5, 6}, "setup-a", rules).decision.retrain
    assert retraining.retraining_gate(store, {1, 2, 3, 4, 5, 6}, "setup-b", rules).decision.retrain


def sample(rng, n, *, shift=0.0, genre_rate=0.3, language="en", poster=0.8):
    return drift.MovieSample(
        labels=(rng.random((n, 4)) < genre_rate).astype(int),
        words=rng.poisson(60, n),
        languages=np.array([language] * n),
        has_poster=rng.random(n) < poster,
        embeddings=rng.normal(shift, 1.0, (n, 16)),
    )


def test_drift_figures_stay_quiet_on_the_same_data_and_name_what_moved():
    rng = np.random.default_rng(0)
    classes = ["A", "B", "C", "D"]
    thresholds = drift.DriftThresholds()
    reference = sample(rng, 1000)
    same = drift.drift_figures(reference, sample(rng, 300), np.full(4, 0.3), classes, thresholds)
    assert len(same) == 6 and all(f.judged and f.passed for f in same)
    auc = next(f for f in same if f.name == "embedding_domain_auc").value
    assert 0.4 < auc < 0.6

    moved = sample(rng, 300, shift=0.8, genre_rate=0.6, language="fr", poster=0.3)
    failed = {
        f.name for f in drift.drift_figures(reference, moved, np.full(4, 0.7), classes, thresholds) if not f.passed
    }
    assert failed == {
        "genre_rate_shift",
        "language_shift",
        "poster_availability_shift",
        "embedding_domain_auc",
        "predicted_rate_shift",
    }
    few = drift.drift_figures(reference, sample(rng, 10, shift=3.0), None, classes, thresholds)
    assert not any(f.judged for f in few) and all(f.passed for f in few) and "not judged" in few[0].detail
    assert drift.drift_figures(reference, sample(rng, 0), None, classes, thresholds) == []
    assert drift.drift_figures(sample(rng, 0), sample(rng, 40), None, classes, thresholds) == []  # no reference left


def test_the_bootstrap_interval_holds_the_macro_f1_of_the_same_predictions():
    rng = np.random.default_rng(1)
    truth = rng.random((400, 5)) < 0.3
    decided = np.where(rng.random((400, 5)) < 0.8, truth, ~truth)
    point = metrics.evaluate(truth, decided, decided.astype(float), list("abcde"))["summary"]["macro_f1"]
    low, high = metrics.bootstrap_macro_f1(truth, decided, resamples=500)
    assert low < point < high and high - low < 0.15
    assert metrics.bootstrap_macro_f1(truth[:0], decided[:0]) != metrics.bootstrap_macro_f1(truth, decided)


def test_macro_figures_average_the_genres_the_movies_have_and_name_the_others():
    """A slice without a genre (the newest years without Documentary) measures the genres it has: a genre
    with nothing to find would count as F1 0 against the model. Its false positives still count in micro."""
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])
    decided = truth.copy()
    decided[0, 2] = 1  # "c" predicted where no movie has it
    summary = metrics.evaluate(truth, decided, decided.astype(float), ["a", "b", "c"])["summary"]
    assert summary["macro_f1"] == 1.0 and summary["genres_without_positive"] == ["c"]
    assert summary["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1))
    with pytest.raises(ValueError, match="no movies to evaluate"):
        metrics.evaluate(truth[:0], decided[:0], decided[:0].astype(float), ["a", "b", "c"])
    assert metrics.not_measured(99) == "not measured: 99 movies to score, fewer than 100" and not metrics.not_measured(
        100
    )


def comparison(**options):
    defaults = dict(
        candidate="stacked_model",
        candidate_run_id="r2",
        candidate_f1=0.60,
        label_set="full",
        data="the current validation split (100 movies)",
        margin=0.0,
        champion_version="1",
        champion_model="baseline_model",
        champion_label_set="full",
        champion_f1=0.62,
        inputs_change="",
    )
    return Comparison(**{**defaults, **options})


@pytest.mark.parametrize(
    ("options", "promoted", "said"),
    [
        ({}, False, "champion kept: validation macro-F1 on the current validation split (100 movies)"),
        ({"candidate_f1": 0.62}, False, "needs more than champion + 0"),  # a tie keeps the champion
        ({"candidate_f1": 0.621}, True, "candidate wins"),
        ({"candidate_f1": 0.63, "margin": 0.02}, False, "needs more than champion + 0.02"),
        ({"champion_version": None}, True, "there was no champion"),
        ({"champion_label_set": "merged"}, True, "label set changes from 'merged'"),
        ({"candidate_f1": 0.7, "inputs_change": "inputs change from text to text+poster"}, True, "text+poster"),
    ],
)
def test_the_promotion_rule_names_both_models_and_figures(options, promoted, said):
    decision = comparison(**options)
    moved, text = decision.verdict()
    assert moved is promoted and said in text
    assert Comparison.from_tags(decision.tags()) == decision
    if options == {}:
        assert "candidate stacked_model 0.6000" in text and "champion v1 (baseline_model) 0.6200" in text
