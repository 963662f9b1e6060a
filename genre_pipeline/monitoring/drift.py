"""Drift between the champion's training movies and the movies that arrived since: one figure per
kind of change, each judged against a threshold. What each means and what to do: docs/refresh.md."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from genre_pipeline.options import described

MAX_DOMAIN_SAMPLE = 2000  # movies per side for the domain classifier: its AUC settles well before this


@dataclasses.dataclass(frozen=True)
class DriftThresholds:
    """When a drift figure fails its check (a warning); the drift checks' and retraining's settings."""

    genre_rate_shift: float = described(
        0.10, "Largest change of one genre's share of movies, new against training (0.10 = 10 points)."
    )
    text_length_ks: float = described(
        0.20, "Kolmogorov-Smirnov distance between the overview+tagline word counts of new and training movies."
    )
    language_shift: float = described(
        0.15, "Total variation distance between the original-language mixes of new and training movies."
    )
    poster_availability_shift: float = described(0.15, "Change of the share of movies with a verified poster.")
    embedding_domain_auc: float = described(
        0.75,
        "ROC AUC of a classifier telling new from training movies by their frozen text embeddings "
        "(0.5: indistinguishable).",
    )
    predicted_rate_shift: float = described(
        0.15,
        "Largest gap between the share of new movies the champion decides a genre for and that genre's share "
        "of its training movies.",
    )
    min_new_movies: int = described(30, "With fewer new movies the figures are shown but not judged.")


@dataclasses.dataclass
class MovieSample:
    """What drift compares of a set of movies, row-aligned."""

    labels: np.ndarray  # movies x classes, 0/1
    words: np.ndarray  # words in each movie's model text
    languages: np.ndarray  # original_language, "" when unknown
    has_poster: np.ndarray  # bool
    embeddings: np.ndarray | None  # movies x d frozen text embeddings, None when not cached


@dataclasses.dataclass(frozen=True)
class DriftFigure:
    name: str
    value: float
    threshold: float
    judged: bool  # False with too few new movies, or when the figure cannot be computed
    detail: str

    @property
    def passed(self) -> bool:
        return not self.judged or self.value <= self.threshold

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, figure: dict) -> "DriftFigure":
        return cls(**{f.name: figure[f.name] for f in dataclasses.fields(cls)})


def _largest_gap(new_rates: np.ndarray, reference_rates: np.ndarray, classes: list[str]) -> tuple[float, str]:
    gaps = np.abs(new_rates - reference_rates)
    j = int(np.argmax(gaps))
    return float(gaps[j]), f"{classes[j]}: {reference_rates[j]:.1%} in training, {new_rates[j]:.1%} new"


def _language_shift(reference: np.ndarray, new: np.ndarray) -> tuple[float, str]:
    languages = sorted(set(reference) | set(new))
    p = np.array([(reference == lang).mean() for lang in languages])
    q = np.array([(new == lang).mean() for lang in languages])
    top = languages[int(np.argmax(np.abs(p - q)))]
    return float(0.5 * np.abs(p - q).sum()), f"largest change: {top or 'unknown'}"


def domain_auc(reference: np.ndarray, new: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling ``new`` rows from ``reference`` rows."""
    rng = np.random.default_rng(seed)

    def sample(rows: np.ndarray) -> np.ndarray:
        return rows[rng.choice(len(rows), MAX_DOMAIN_SAMPLE, replace=False)] if len(rows) > MAX_DOMAIN_SAMPLE else rows

    reference, new = sample(reference), sample(new)
    features = np.vstack([reference, new])
    is_new = np.r_[np.zeros(len(reference)), np.ones(len(new))]
    folds = StratifiedKFold(n_splits=min(5, len(reference), len(new)), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=1000), features, is_new, cv=folds, method="predict_proba")[
        :, 1
    ]
    return float(roc_auc_score(is_new, scores))


def drift_figures(
    reference: MovieSample,
    new: MovieSample,
    predicted_rates: np.ndarray | None,
    classes: list[str],
    thresholds: DriftThresholds,
) -> list[DriftFigure]:
    """Each drift figure of ``new`` against ``reference`` (the champion's training movies); none when
    either side has no movie (no new movie; or none of the champion's training movies is left in the
    data folder to compare with)."""
    if len(new.labels) == 0 or len(reference.labels) == 0:
        return []
    enough = len(new.labels) >= max(thresholds.min_new_movies, 2)
    few = "" if enough else f" (only {len(new.labels)} new movies: not judged)"
    reference_rates = reference.labels.mean(axis=0)
    figures = []

    def add(name: str, value: float, detail: str) -> None:
        threshold = getattr(thresholds, name)
        figures.append(DriftFigure(name, float(value), threshold, enough and not math.isnan(value), detail + few))

    add("genre_rate_shift", *_largest_gap(new.labels.mean(axis=0), reference_rates, classes))
    add(
        "text_length_ks",
        stats.ks_2samp(reference.words, new.words).statistic,
        f"median words {np.median(reference.words):.0f} in training, {np.median(new.words):.0f} new",
    )
    add("language_shift", *_language_shift(reference.languages, new.languages))
    add(
        "poster_availability_shift",
        abs(new.has_poster.mean() - reference.has_poster.mean()),
        f"{reference.has_poster.mean():.1%} with a poster in training, {new.has_poster.mean():.1%} new",
    )
    if reference.embeddings is not None and new.embeddings is not None and enough:
        add("embedding_domain_auc", domain_auc(reference.embeddings, new.embeddings), "0.5: the embeddings look alike")
    else:
        add("embedding_domain_auc", float("nan"), "not computed")
    if predicted_rates is not None:
        add("predicted_rate_shift", *_largest_gap(predicted_rates, reference_rates, classes))
    return figures
