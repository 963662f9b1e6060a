"""Decision thresholds: the rule chosen on validation movies it was not tuned on, then tuned on all of them."""

import numpy as np
import pytest

from genre_pipeline.models.thresholds import THRESHOLD_RULES, choose_thresholds, rule_thresholds


@pytest.mark.parametrize("rule", THRESHOLD_RULES)
def test_a_genre_no_validation_movie_has_keeps_the_untuned_threshold(rule):
    """Every threshold scores F1 0 on a genre without a positive: the grid's lowest would win and the
    genre would be decided for nearly every movie."""
    probabilities = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.2]])
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    thresholds = rule_thresholds(rule, probabilities, labels)
    assert thresholds[1] == 0.5 and 0.05 <= thresholds[0] <= 0.95
    if rule == "per_genre":
        assert 0.2 < thresholds[0] <= 0.7


def calibrated(n: int, genres: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are what they say, and labels drawn from them: rare genres (5-15% of movies)."""
    probabilities = rng.beta(0.6, 6.0, size=(n, genres))
    return probabilities, (rng.random((n, genres)) < probabilities).astype(np.uint8)


def test_each_genre_gets_its_own_threshold_when_its_probabilities_need_one():
    rng = np.random.default_rng(3)
    probabilities, labels = calibrated(4000, 6, rng)
    probabilities[:, 3:] **= 0.25  # a head that overrates half the genres: their best thresholds are far higher
    choice = choose_thresholds(probabilities, labels)
    assert choice.rule == "per_genre", choice.held_out_macro_f1
    assert choice.thresholds[3:].min() > choice.thresholds[:3].max()
    np.testing.assert_array_equal(choice.thresholds, rule_thresholds("per_genre", probabilities, labels))


def test_calibrated_probabilities_of_few_movies_get_a_rule_that_reads_less_into_them():
    # Per genre, the F1-best threshold of 300 movies follows their noise; on the movies it was not tuned on it
    # does worse than a threshold set from one figure per genre (or one for all).
    rng = np.random.default_rng(5)
    probabilities, labels = calibrated(300, 12, rng)
    choice = choose_thresholds(probabilities, labels)
    assert choice.rule != "per_genre"
    assert choice.held_out_macro_f1[choice.rule] == max(choice.held_out_macro_f1.values())
    assert choice.held_out_macro_f1[choice.rule] > choice.held_out_macro_f1["per_genre"] + 0.005
    np.testing.assert_array_equal(choice.thresholds, rule_thresholds(choice.rule, probabilities, labels))
    # ... and it does better on new movies drawn the same way.
    new_probabilities, new_labels = calibrated(20000, 12, rng)

    def macro_f1(thresholds):
        decided = new_probabilities >= thresholds
        tp = (decided & (new_labels == 1)).sum(0)
        return np.mean(2 * tp / (2 * tp + (decided != new_labels.astype(bool)).sum(0)))

    assert macro_f1(choice.thresholds) > macro_f1(rule_thresholds("per_genre", probabilities, labels))
    figures = choice.figures()
    assert figures["threshold_rule"] == choice.rule
    assert {f"threshold_rule_held_out_macro_f1_{rule}" for rule in THRESHOLD_RULES} < set(figures)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown threshold rule 'best'.*per_genre, halfway, shared, half_best_f1"):
        rule_thresholds("best", np.zeros((2, 1)), np.zeros((2, 1)))
