"""The movies a registered model has seen (its training run's movie ids by split, recorded as an
artifact) and the labelled movies it has not: what the champion is scored on as new, by the monitoring
(every such movie) and by promotion (those of the current test split)."""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow.exceptions import MlflowException

from genre_pipeline.champion.scoring import LabelledMovies, in_classes, labelled_movies
from genre_pipeline.store import DataStore
from genre_pipeline.tracking import TRAINING_MOVIES_ARTIFACT


@dataclasses.dataclass(frozen=True)
class TrainingMovies:
    """A training run's movie ids by split: trained on, tuned on, tested on."""

    by_split: dict[str, list[int]]

    @property
    def ids(self) -> set[int]:
        """Every movie the run knew, whatever its split."""
        return {int(i) for ids in self.by_split.values() for i in ids}

    def split(self, name: str) -> set[int]:
        return {int(i) for i in self.by_split.get(name, [])}


def training_movies(run_id: str) -> TrainingMovies | None:
    """The movie ids by split of the run ``run_id`` (the process's store), or None when it recorded none."""
    try:
        return TrainingMovies(mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_MOVIES_ARTIFACT}"))
    except (MlflowException, OSError):
        return None


def unseen_movies(
    store: DataStore, label_set: str, seen: TrainingMovies, classes: list[str], *, split: str | None = None
) -> LabelledMovies:
    """The label set's labelled movies of the data folder that ``seen`` does not hold (only those of the
    current ``split`` when one is named), labelled in ``classes``: the model's own, since a refresh can
    add or drop a genre of the current label set."""
    known = seen.ids
    split_of = store.read_table(store.splits_file).set_index("id")["split"] if split else None
    movies = labelled_movies(
        store, label_set, lambda i: i not in known and (split_of is None or split_of.get(i) == split)
    )
    return in_classes(store, movies, classes)
