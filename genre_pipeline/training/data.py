"""The data a model trains on: each labelled movie of the label set with its split, texts, poster,
metadata and cached embeddings, aligned by movie id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS
from genre_pipeline.dataset.labels import LabelSet
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.models.encoders.cache import Embeddings
from genre_pipeline.models.members import MemberInputs
from genre_pipeline.models.metrics import MIN_MEASURED_MOVIES
from genre_pipeline.store import DataStore, frame_fingerprint


@dataclasses.dataclass
class TrainingData:
    ids: np.ndarray
    titles: list[str]
    texts: list[str]
    split: np.ndarray
    labels: np.ndarray
    classes: list[str]
    text_features: dict[str, np.ndarray]  # cached embeddings by text encoder, when frozen encoders are used
    poster_features: dict[str, np.ndarray]  # cached poster features by image encoder (zeros without a poster)
    has_poster: np.ndarray
    poster_files: list[Path | None]  # the verified poster of each movie, for fine-tuning
    metadata: pd.DataFrame  # METADATA_COLUMNS, one row per movie

    def rows(self, split: str, *, posters_only: bool = False) -> np.ndarray:
        mask = self.split == split
        return mask & self.has_poster if posters_only else mask

    def inputs(self, rows: np.ndarray | None = None) -> MemberInputs:
        everything = MemberInputs(
            self.texts,
            self.titles,
            self.text_features,
            self.poster_features,
            self.has_poster,
            self.metadata.reset_index(drop=True),
        )
        return everything if rows is None else everything.take(rows)


@dataclasses.dataclass(frozen=True)
class TemporalSplit:
    """The same movies split by time (see ``temporal_split``): ``data`` to train and score on, or None
    with ``reason`` when a model cannot be measured that way."""

    years: str  # e.g. "2021-2022"
    data: TrainingData | None
    reason: str = ""


def temporal_split(
    data: TrainingData, recent_years: int, *, posters_only: bool = False, min_movies: int = MIN_MEASURED_MOVIES
) -> TemporalSplit | None:
    """The same movies split by time: the newest ``recent_years`` release years are the test split, the
    older movies keep their train and validation splits (their test movies are left out, so that the
    model trains on no more than the random split's does). ``posters_only``: the model scores only
    movies with a poster, so only those count. Not measured (``data`` None, with the reason) when fewer
    than ``min_movies`` recent movies or older train movies remain; None when there is no temporal
    evaluation at all (``recent_years`` 0 or no release year known)."""
    years = pd.to_numeric(data.metadata["release_year"], errors="coerce").to_numpy()
    if recent_years <= 0 or np.isnan(years).all():
        return None
    newest = int(np.nanmax(years))
    first_recent = newest - recent_years + 1
    span = f"{first_recent}-{newest}"
    recent = years >= first_recent  # an unknown year is never recent
    older = ~recent & np.isin(data.split, ["train", "validation"])
    scorable = data.has_poster if posters_only else np.ones(len(years), dtype=bool)
    which = " with a poster" if posters_only else ""
    for n, side in (
        (int((recent & scorable).sum()), f"of {span}"),
        (int((older & scorable & (data.split == "train")).sum()), f"before {first_recent} to train on"),
    ):
        if n < min_movies:
            return TemporalSplit(
                span, None, f"not measured: {n} labelled movies{which} {side}, fewer than {min_movies}"
            )
    split = np.where(recent, "test", np.where(older, data.split, "unused"))
    return TemporalSplit(span, dataclasses.replace(data, split=split))


def _matrix_by_id(embeddings: Embeddings, ids: np.ndarray, needed: np.ndarray, modality: str) -> np.ndarray:
    """The embedding of each of ``ids`` (zeros where ``needed`` is False)."""
    rows = embeddings.by_id()
    missing = [int(i) for i, need in zip(ids, needed) if need and int(i) not in rows]
    if missing:
        raise ValueError(
            f"{len(missing)} labelled movies have no {modality} embedding (e.g. {missing[:5]}): "
            f"materialize {modality}_embeddings"
        )
    matrix = np.zeros((len(ids), embeddings.vectors.shape[1]), dtype=np.float32)
    for n, (movie_id, need) in enumerate(zip(ids, needed)):
        if need:
            matrix[n] = embeddings.vectors[rows[int(movie_id)]]
    return matrix


def assemble(
    movies: pd.DataFrame,
    label_set: LabelSet,
    splits: pd.DataFrame,
    text: dict[str, Embeddings],
    image: dict[str, Embeddings],
    poster_root: Path,
) -> TrainingData:
    """Align labels, splits, texts, posters, metadata and cached features (by encoder) by movie id."""
    missing_columns = [c for c in METADATA_COLUMNS if c not in movies.columns]
    if missing_columns:
        raise ValueError(f"movies_clean has no {missing_columns} columns: materialize movies_clean again")
    movies = movies.set_index("id")
    split_of = splits.set_index("id")["split"]
    ids = label_set.ids
    has_poster = (movies.loc[ids, "poster_status"] == poster_files.OK).to_numpy()
    everyone = np.ones(len(ids), dtype=bool)
    return TrainingData(
        ids=ids,
        titles=movies.loc[ids, "title"].tolist(),
        texts=movies.loc[ids, "text"].tolist(),
        split=split_of.loc[ids].to_numpy(),
        labels=label_set.matrix,
        classes=label_set.classes,
        text_features={name: _matrix_by_id(e, ids, everyone, "text") for name, e in text.items()},
        poster_features={name: _matrix_by_id(e, ids, has_poster, "poster") for name, e in image.items()},
        has_poster=has_poster,
        poster_files=[poster_root / f if ok else None for f, ok in zip(movies.loc[ids, "poster_file"], has_poster)],
        metadata=movies.loc[ids, list(METADATA_COLUMNS)].reset_index(drop=True),
    )


def load(store: DataStore, label_set: str, text: list[EncoderRef], image: list[EncoderRef]) -> tuple[TrainingData, str]:
    """The label set's movies from the data folder, with the cached embeddings of the encoders given,
    and a fingerprint of the labels and splits they were read from."""
    label_frame = store.read_table(store.labels_file(label_set))
    splits = store.read_table(store.splits_file)
    data = assemble(
        store.read_table(store.movies_clean_file),
        LabelSet.from_frame(label_set, label_frame),
        splits,
        {ref.name: Embeddings.load(store.embeddings_file("text", ref.name, ref.backend)) for ref in text},
        {ref.name: Embeddings.load(store.embeddings_file("image", ref.name, ref.backend)) for ref in image},
        store.root,
    )
    return data, frame_fingerprint(label_frame) + frame_fingerprint(splits)
