"""Prequential scoring: a model on movies it never saw (``champion.seen.unseen_movies``), with its own
thresholds and a bootstrap interval, before any model trains on them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.scoring import LabelledMovies, decided, predicted_on
from genre_pipeline.models import metrics


@dataclasses.dataclass
class PrequentialScore:
    n_movies: int
    macro_f1: float
    micro_f1: float
    macro_f1_interval: tuple[float, float]  # 95% percentile bootstrap over movies
    per_genre: pd.DataFrame  # genre, support, predicted, precision, recall, f1
    predicted_rates: np.ndarray  # share of the movies each genre is decided for

    def summary(self) -> dict:
        low, high = self.macro_f1_interval
        return {
            "movies": self.n_movies,
            "macro_f1": round(self.macro_f1, 4),
            "macro_f1_low": round(low, 4),
            "macro_f1_high": round(high, 4),
            "micro_f1": round(self.micro_f1, 4),
        }


def score(
    predictor: GenrePredictor, movies: LabelledMovies, *, resamples: int = 1000, seed: int = 0
) -> PrequentialScore:
    """The predictor on ``movies`` (at least one, labelled in its classes) with its own thresholds."""
    probabilities, decisions = decided(predictor, predicted_on(predictor, movies), movies.classes)
    report = metrics.evaluate(movies.labels, decisions, probabilities, movies.classes)
    return PrequentialScore(
        n_movies=len(movies.ids),
        macro_f1=report["summary"]["macro_f1"],
        micro_f1=report["summary"]["micro_f1"],
        macro_f1_interval=metrics.bootstrap_macro_f1(movies.labels, decisions, resamples=resamples, seed=seed),
        per_genre=report["per_genre"][["genre", "support", "predicted", "precision", "recall", "f1"]],
        predicted_rates=decisions.mean(axis=0),
    )
