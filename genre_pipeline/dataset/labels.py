"""Genre label matrices: the pruned full set (18 genres on TMDb data) and its merge into 12 with "Others".

Pruning: a genre on fewer than ``min_genre_fraction`` of the movies (1.5%), or fewer than
``min_genre_count``, is too rare to learn and leaves the full set: with 15% of movies in
the test split, such a genre would have only a few dozen test examples, too few to
measure. (On TMDb data this removes "TV Movie": 19 genres become 18.)

The merge rule, data-driven and deterministic:

1. Every genre below ``min_fraction`` of the movies merges into "Others" (too rare to learn).
2. The rest are ranked twice: by frequency, and by connectivity in the genre co-occurrence
   graph (an edge per pair of genres weighted by their Jaccard overlap, movies with both /
   movies with either; a genre's connectivity is its weighted degree, computed with
   networkx on the full graph). While more than ``n_labels - 1`` genres remain, the genre
   with the lowest sum of the two ranks merges next, ties going to the less frequent one.
   So a genre that is both rare and isolated goes first; being frequent or being tied into
   the graph each count in a genre's favour.
3. "Others" is 1 for a movie that has any merged genre. When no genre merges (few genres
   to start with), there is no "Others" column: a label that is never 1 cannot be learned.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.preprocessing import MultiLabelBinarizer

from genre_pipeline.options import described

OTHERS = "Others"
# The two label sets every model can train on: the pruned TMDb genres, and their merge with Others.
LabelSetName = typing.Literal["full", "merged"]
FULL, MERGED = typing.get_args(LabelSetName)
LABEL_SETS: tuple[LabelSetName, ...] = (FULL, MERGED)


def check_label_set(name: str) -> LabelSetName:
    """``name`` if it names a label set, else a ValueError that lists them."""
    if name not in LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}: use one of {', '.join(LABEL_SETS)}")
    return name


@dataclasses.dataclass
class LabelSet:
    name: LabelSetName
    classes: list[str]
    ids: np.ndarray  # movie ids, row order of ``matrix``
    matrix: np.ndarray  # (movies, classes) of 0/1

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.matrix, columns=self.classes)
        frame.insert(0, "id", self.ids)
        return frame

    @classmethod
    def from_frame(cls, name: str, frame: pd.DataFrame) -> "LabelSet":
        classes = [c for c in frame.columns if c != "id"]
        return cls(check_label_set(name), classes, frame["id"].to_numpy(), frame[classes].to_numpy(dtype=np.uint8))

    def counts(self) -> dict[str, int]:
        return dict(zip(self.classes, self.matrix.sum(axis=0).astype(int).tolist()))


@dataclasses.dataclass
class LabelResult:
    full: LabelSet
    merged: LabelSet
    pruned: dict[str, int]  # genre -> movies, removed from the full set as too rare
    merge_reasons: dict[str, str]  # genre -> why it merged into Others
    connectivity: dict[str, float]
    dropped_without_label: int


def binarize(ids, genre_lists, *, min_count: int) -> tuple[LabelSet, dict[str, int], int]:
    """MultiLabelBinarizer over the genres, pruning genres on fewer than ``min_count`` movies.

    Movies left with no genre after pruning are dropped (and counted)."""
    binarizer = MultiLabelBinarizer()
    matrix = binarizer.fit_transform(genre_lists)
    counts = matrix.sum(axis=0)
    keep = counts >= min_count
    pruned = {g: int(c) for g, c, k in zip(binarizer.classes_, counts, keep) if not k}
    matrix = matrix[:, keep].astype(np.uint8)
    classes = [str(g) for g, k in zip(binarizer.classes_, keep) if k]
    has_label = matrix.sum(axis=1) > 0
    ids = np.asarray(list(ids))
    return LabelSet(FULL, classes, ids[has_label], matrix[has_label]), pruned, int((~has_label).sum())


def cooccurrence(labels: LabelSet) -> pd.DataFrame:
    matrix = labels.matrix.astype(np.int64)
    return pd.DataFrame(matrix.T @ matrix, index=labels.classes, columns=labels.classes)


def connectivity(labels: LabelSet) -> dict[str, float]:
    """Weighted degree of each genre in the Jaccard co-occurrence graph."""
    counts = cooccurrence(labels)
    graph = nx.Graph()
    graph.add_nodes_from(labels.classes)
    for i, a in enumerate(labels.classes):
        for b in labels.classes[i + 1 :]:
            both = counts.at[a, b]
            if both:
                graph.add_edge(a, b, weight=both / (counts.at[a, a] + counts.at[b, b] - both))
    return {genre: float(degree) for genre, degree in graph.degree(weight="weight")}


def merge_into_others(
    labels: LabelSet, *, n_labels: int = 12, min_fraction: float = 0.03
) -> tuple[LabelSet, dict[str, str], dict[str, float]]:
    """Apply the module's merge rule; return the merged label set, the reasons and each genre's connectivity."""
    frequency = dict(zip(labels.classes, labels.matrix.mean(axis=0).tolist()))
    degree = connectivity(labels)
    reasons: dict[str, str] = {}
    for genre in labels.classes:
        if frequency[genre] < min_fraction:
            reasons[genre] = f"frequency {frequency[genre]:.1%} < {min_fraction:.0%}"
    remaining = [g for g in labels.classes if g not in reasons]
    frequency_rank = {g: r for r, g in enumerate(sorted(remaining, key=lambda g: (frequency[g], g)))}
    degree_rank = {g: r for r, g in enumerate(sorted(remaining, key=lambda g: (degree[g], g)))}
    while len(remaining) > n_labels - 1:
        weakest = min(remaining, key=lambda g: (frequency_rank[g] + degree_rank[g], frequency[g], g))
        reasons[weakest] = (
            f"lowest frequency + connectivity rank among the remaining genres "
            f"(frequency {frequency[weakest]:.1%}, rank {frequency_rank[weakest]}; "
            f"weighted degree {degree[weakest]:.3f}, rank {degree_rank[weakest]})"
        )
        remaining.remove(weakest)
    kept = [g for g in labels.classes if g in remaining]
    matrix = labels.matrix[:, [labels.classes.index(g) for g in kept]]
    if reasons:
        others = labels.matrix[:, [labels.classes.index(g) for g in reasons]].max(axis=1, keepdims=True)
        matrix, kept = np.hstack([matrix, others]), kept + [OTHERS]
    return LabelSet(MERGED, kept, labels.ids, matrix.astype(np.uint8)), reasons, degree


@dataclasses.dataclass(frozen=True)
class LabelRules:
    """How the label sets are built; the genre_labels asset's run config is made from these fields."""

    min_genre_count: int = described(10, "Prune genres on fewer movies than this.")
    min_genre_fraction: float = described(0.015, "Prune genres on a smaller share of movies.")
    n_merged_labels: int = described(12, "Labels after merging, Others included.")
    merge_min_fraction: float = described(0.03, "Genres rarer than this merge into Others.")


def build_labels(ids, genre_lists, rules: LabelRules | None = None) -> LabelResult:
    rules = rules or LabelRules()
    genre_lists = list(genre_lists)
    min_count = max(rules.min_genre_count, math.ceil(rules.min_genre_fraction * len(genre_lists)))
    full, pruned, dropped = binarize(ids, genre_lists, min_count=min_count)
    if len(full.classes) < 2:
        raise ValueError(
            f"only {len(full.classes)} genre(s) have at least {min_count} of the {len(genre_lists)} movies: "
            f"too few to learn genres from; ingest more movies (a wider GENRE_PIPELINE_YEARS range)"
        )
    merged, reasons, degree = merge_into_others(
        full, n_labels=rules.n_merged_labels, min_fraction=rules.merge_min_fraction
    )
    return LabelResult(full, merged, pruned, reasons, degree, dropped)
