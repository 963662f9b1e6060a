"""Stacking: members' out-of-fold probabilities on the train split, combined per genre by
gradient-boosted trees that also read the metadata.

Cross-fitting keeps the stacker honest: each train movie's member probabilities come from
members that never saw it, so the stacker learns how far to trust each member on unseen
movies. Thresholds are then tuned on validation, and the test split is never touched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import KFold

from genre_pipeline.models.members import MemberInputs
from genre_pipeline.models.metadata import MetadataEncoder, hide_at_random

_EPSILON = 1e-4


def out_of_fold(
    fit_and_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], rows: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Probabilities for each of ``rows`` from a model fitted on the other folds.
    ``fit_and_predict(fit_rows, predict_rows)`` fits a fresh member and predicts."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    result = None
    for fit_index, predict_index in KFold(folds, shuffle=True, random_state=seed).split(rows):
        predicted = fit_and_predict(rows[fit_index], rows[predict_index])
        if result is None:
            result = np.zeros((len(rows), predicted.shape[1]), dtype=np.float32)
        result[predict_index] = predicted
    return result


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


def _boosted_trees(n_movies: int, seed: int, categorical: np.ndarray) -> HistGradientBoostingClassifier:
    """Sized for thousands of movies; on a few hundred (the demo catalog) smaller leaves and a fixed,
    short run, since a held-out share for early stopping would be a handful of movies."""
    large = n_movies >= 2000
    return HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=400 if large else 60,
        max_leaf_nodes=15 if large else 4,
        min_samples_leaf=40 if large else 5,
        l2_regularization=1.0,
        early_stopping=large,  # on a share of the train movies it fits on, never on validation
        validation_fraction=0.15,
        n_iter_no_change=30,
        categorical_features=categorical,
        random_state=seed,
    )


class Stacker:
    """Per genre, gradient-boosted trees over every member's logits for every genre (genres inform
    each other: a confident Animation says something about Family) and, optionally, the metadata.
    A member that needs a poster gives NaN for movies without one, as a missing metadata field is
    NaN: the trees learn what to do without them."""

    def __init__(self, member_names, poster_members, metadata: MetadataEncoder | None, models: list):
        self.member_names, self.poster_members = list(member_names), list(poster_members)
        self.metadata, self.models = metadata, models

    def features(self, member_probabilities: dict[str, np.ndarray], inputs: MemberInputs) -> np.ndarray:
        parts = []
        for name in self.member_names:
            logits = _logit(member_probabilities[name].astype(np.float64))
            if name in self.poster_members:
                logits = np.where(inputs.has_poster[:, None], logits, np.nan)
            parts.append(logits)
        if self.metadata is not None:
            parts.append(self.metadata.transform(inputs.metadata))
        return np.hstack(parts)

    def probabilities(self, member_probabilities: dict[str, np.ndarray], inputs: MemberInputs) -> np.ndarray:
        x = self.features(member_probabilities, inputs)
        return np.column_stack([model.predict_proba(x)[:, 1] for model in self.models]).astype(np.float32)

    @classmethod
    def fit(
        cls,
        member_probabilities: dict[str, np.ndarray],
        poster_members: list[str],
        inputs: MemberInputs,
        labels: np.ndarray,
        *,
        use_metadata: bool,
        hide_movies: float = 0.10,
        hide_fields: float = 0.05,
        seed: int = 42,
    ) -> "Stacker":
        """Fit on out-of-fold member probabilities of train movies. With metadata, ``hide_movies`` of
        the movies lose all of it and each other field is hidden with probability ``hide_fields``, so
        that missing metadata is a state the stacker learned."""
        metadata = MetadataEncoder.fit(inputs.metadata) if use_metadata else None
        shell = cls(list(member_probabilities), poster_members, metadata, [])
        if use_metadata:
            inputs = dataclasses.replace(
                inputs, metadata=hide_at_random(inputs.metadata, hide_movies, hide_fields, np.random.default_rng(seed))
            )
        x = shell.features(member_probabilities, inputs)
        categorical = np.zeros(x.shape[1], dtype=bool)
        if use_metadata:
            categorical[x.shape[1] - len(metadata.feature_names)] = True  # the language
        shell.models = [_boosted_trees(len(x), seed, categorical).fit(x, labels[:, j]) for j in range(labels.shape[1])]
        return shell

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.models, directory / "trees.joblib")
        spec = {
            "member_names": self.member_names,
            "poster_members": self.poster_members,
            "metadata": self.metadata.to_dict() if self.metadata else None,
        }
        (directory / "stacker.json").write_text(json.dumps(spec))

    @classmethod
    def load(cls, directory: Path) -> "Stacker":
        spec = json.loads((directory / "stacker.json").read_text())
        metadata = MetadataEncoder.from_dict(spec["metadata"]) if spec["metadata"] else None
        return cls(spec["member_names"], spec["poster_members"], metadata, joblib.load(directory / "trees.joblib"))
