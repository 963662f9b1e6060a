"""Train / validation / test by multi-label iterative stratification, stable across refreshes.

A movie keeps the split it was first given: the assignment history is kept, and only
movies never seen before are assigned, by stratifying them among themselves (or, for a
batch too small to stratify, by a seeded hash of the id with the same fractions). So a
test movie never moves into train, and old movies are never reshuffled.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from genre_pipeline.options import described

SPLITS = ("train", "validation", "test")
MIN_STRATIFIED_BATCH = 30


@dataclasses.dataclass(frozen=True)
class SplitFractions:
    """The shares of new movies that go to validation and test; the rest train. The dataset_splits
    asset's run config is made from these fields and the seed."""

    validation_fraction: float = described(0.15, "Share of new movies assigned to validation.")
    test_fraction: float = described(0.15, "Share of new movies assigned to test.")
    seed: int = 42

    def __post_init__(self):
        if not (
            0 < self.validation_fraction < 1
            and 0 < self.test_fraction < 1
            and self.validation_fraction + self.test_fraction < 1
        ):
            raise ValueError(f"split fractions must be in (0, 1) and leave room for train: {self}")


def _stratified(ids: np.ndarray, labels: np.ndarray, fractions: SplitFractions, seed: int) -> dict[int, str]:
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fractions.test_fraction, random_state=seed)
    rest_index, test_index = next(first.split(np.zeros(len(ids)), labels))
    second = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=fractions.validation_fraction / (1 - fractions.test_fraction), random_state=seed + 1
    )
    train_pos, validation_pos = next(second.split(np.zeros(len(rest_index)), labels[rest_index]))
    assignment = {int(ids[i]): "test" for i in test_index}
    assignment.update({int(ids[rest_index[i]]): "validation" for i in validation_pos})
    assignment.update({int(ids[rest_index[i]]): "train" for i in train_pos})
    return assignment


def _hashed(ids: np.ndarray, fractions: SplitFractions, seed: int) -> dict[int, str]:
    assignment = {}
    for movie_id in ids:
        digest = hashlib.sha256(f"{seed}:{int(movie_id)}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        assignment[int(movie_id)] = (
            "test"
            if u < fractions.test_fraction
            else "validation"
            if u < fractions.test_fraction + fractions.validation_fraction
            else "train"
        )
    return assignment


def assign_splits(
    ids,
    labels: np.ndarray,
    history: pd.DataFrame | None = None,
    *,
    fractions: SplitFractions | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Return (splits of the given movies, updated history, number newly assigned).

    ``history`` has columns id and split: every assignment ever made."""
    fractions = fractions or SplitFractions()
    seed = fractions.seed
    ids = np.asarray(ids, dtype=np.int64)
    known = dict(zip(history["id"].astype(int), history["split"])) if history is not None and len(history) else {}
    is_new = np.array([int(i) not in known for i in ids], dtype=bool)
    new_ids, new_labels = ids[is_new], labels[is_new]
    if len(new_ids) >= MIN_STRATIFIED_BATCH:
        fresh = _stratified(new_ids, new_labels, fractions, seed + len(known))
    else:
        fresh = _hashed(new_ids, fractions, seed)
    known.update(fresh)
    current = pd.DataFrame({"id": ids, "split": [known[int(i)] for i in ids]})
    updated = pd.DataFrame({"id": list(known), "split": list(known.values())}).sort_values("id", ignore_index=True)
    return current, updated, len(fresh)


def split_label_counts(splits: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Genre counts per split: one row per genre, one column per split."""
    merged = labels.merge(splits, on="id")
    classes = [c for c in labels.columns if c != "id"]
    counts = merged.groupby("split")[classes].sum().T
    return counts.reindex(columns=list(SPLITS), fill_value=0).astype(int)
