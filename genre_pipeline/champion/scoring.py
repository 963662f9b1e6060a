"""Scoring many movies with a predictor: TMDb movies in chunks, a snapshot folder scored against its
genres (``genre-pipeline evaluate``), and the batch predictions table."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from genre_pipeline.champion.predictor import GenrePredictor, ModelOutput
from genre_pipeline.dataset.cleaning import METADATA_COLUMNS
from genre_pipeline.dataset.labels import OTHERS, LabelSet
from genre_pipeline.ingestion import posters as poster_statuses
from genre_pipeline.models import metrics
from genre_pipeline.models.encoders import EncoderRef, cache
from genre_pipeline.models.movie import probability_column, rows_from_tmdb
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb.snapshot import load_snapshot


def labels_for(genres: list[str], classes: list[str], known_genres: set[str]) -> np.ndarray:
    """A movie's TMDb genres as a row of the champion's label set (merged genres count as Others)."""
    row = np.zeros(len(classes), dtype=np.uint8)
    for genre in genres:
        if genre in classes:
            row[classes.index(genre)] = 1
        elif OTHERS in classes and genre in known_genres:
            row[classes.index(OTHERS)] = 1
    return row


@dataclasses.dataclass
class StoredMovies:
    """Cleaned movies of the data folder as the model's input rows, posters read only when asked for."""

    frame: pd.DataFrame  # the model's input columns except the poster
    poster_files: list[Path | None]  # each movie's verified poster

    def rows(self, part: slice = slice(None), *, with_posters: bool = True) -> pd.DataFrame:
        """The input rows of ``part``, with the poster bytes (None for every movie unless ``with_posters``)."""
        frame = self.frame.iloc[part].reset_index(drop=True)
        files = self.poster_files[part] if with_posters else [None] * len(frame)
        frame["poster"] = [path.read_bytes() if path is not None else None for path in files]
        return frame


@dataclasses.dataclass
class LabelledMovies(StoredMovies):
    """Stored movies with their labels."""

    labels: np.ndarray  # movies x classes
    classes: list[str]
    ids: np.ndarray  # movie ids, row order

    def describe(self, split: str) -> str:
        return f"the current {split} split ({len(self.frame):,} movies)"


def stored_movies(store: DataStore, ids) -> StoredMovies:
    """The cleaned movies ``ids`` of the data folder, as the model reads them."""
    movies = store.read_table(store.movies_clean_file).set_index("id").loc[list(ids)]
    posters = [
        store.root / f if status == poster_statuses.OK else None
        for f, status in zip(movies["poster_file"], movies["poster_status"])
    ]
    return StoredMovies(movies[["overview", "tagline", "title", *METADATA_COLUMNS]].reset_index(drop=True), posters)


def labelled_movies(store: DataStore, label_set: str, keep) -> LabelledMovies:
    """The label set's labelled movies of the data folder for which ``keep(id)`` is true, as the model
    reads them."""
    labels = LabelSet.from_frame(label_set, store.read_table(store.labels_file(label_set)))
    kept = np.array([bool(keep(int(i))) for i in labels.ids], dtype=bool)
    movies = stored_movies(store, labels.ids[kept])
    return LabelledMovies(movies.frame, movies.poster_files, labels.matrix[kept], labels.classes, labels.ids[kept])


def split_movies(store: DataStore, label_set: str, split: str) -> LabelledMovies:
    """One split's labelled movies of the data folder, as the model reads them."""
    split_of = store.read_table(store.splits_file).set_index("id")["split"]
    return labelled_movies(store, label_set, lambda movie_id: split_of.get(movie_id) == split)


def store_embeddings(store: DataStore) -> Callable[[EncoderRef], dict[str, np.ndarray]]:
    """The data folder's cached embeddings of an encoder (``ref``: its name and backend) by content key,
    each file read once however many models are given it."""
    read = functools.cache(cache.known_vectors)
    return lambda ref: read(store.embeddings_file(ref.modality, ref.name, ref.backend))


def reusing_store_embeddings(
    predictor: GenrePredictor, known: Callable[[EncoderRef], dict[str, np.ndarray]]
) -> GenrePredictor:
    """``predictor``, whose frozen encoders now take the cached embedding (``store_embeddings``) of any
    text or poster with the same content instead of encoding it again: scoring the current splits
    through the logged model then costs no encoder time. Returns it, for chaining."""
    predictor.reuse_embeddings(known)
    return predictor


def _predicted_in_chunks(predictor: GenrePredictor, n_movies: int, rows_of, chunk: int, progress=None) -> ModelOutput:
    """The model's answer for the input rows ``rows_of(slice)`` gives, ``chunk`` movies at a time so that
    only one chunk's posters are in memory."""
    parts = []
    for start in range(0, n_movies, chunk):
        parts.append(predictor.predict_frame(rows_of(slice(start, start + chunk))))
        if progress:
            progress(min(start + chunk, n_movies), n_movies)
    return ModelOutput.concatenate(parts, len(predictor.classes))


def predicted_on(predictor: GenrePredictor, movies: StoredMovies, chunk: int = 256) -> ModelOutput:
    """The model's answer for stored movies, a chunk at a time."""
    return _predicted_in_chunks(
        predictor, len(movies.frame), lambda part: movies.rows(part, with_posters=predictor.uses_posters), chunk
    )


def in_classes(store: DataStore, movies: LabelledMovies, classes: list[str]) -> LabelledMovies:
    """The same movies labelled in ``classes`` from their TMDb genres (a known genre outside them counts
    as Others when that is one of them): to score a model of another label set on them."""
    genres = store.read_table(store.movies_clean_file).set_index("id")["genres"]
    known = {g["name"] for g in store.read_json(store.tmdb_genres_file, {}).get("genres", [])}
    rows = [labels_for(list(genres[int(i)]), classes, known) for i in movies.ids]
    labels = np.stack(rows) if rows else np.zeros((0, len(classes)), dtype=np.uint8)
    return dataclasses.replace(movies, labels=labels, classes=list(classes))


def decided(predictor: GenrePredictor, output: ModelOutput, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and decisions for ``classes``, a subset of its own."""
    columns = [list(predictor.classes).index(c) for c in classes]
    return output.probabilities[:, columns], output.decisions[:, columns]


def macro_f1_on(predictor: GenrePredictor, movies: LabelledMovies, chunk: int = 256) -> float | None:
    """The predictor's macro-F1 on ``movies`` with its own thresholds, over the movies' classes; None
    when it does not predict all of them."""
    if not set(movies.classes) <= set(predictor.classes):
        return None
    probabilities, decisions = decided(predictor, predicted_on(predictor, movies, chunk), movies.classes)
    return float(metrics.evaluate(movies.labels, decisions, probabilities, movies.classes)["summary"]["macro_f1"])


def snapshot_poster_files(movies: list[dict], posters_dir: Path) -> dict[int, Path]:
    return {m["id"]: posters_dir / m["poster_path"].lstrip("/") for m in movies if m.get("poster_path")}


def predict_movies(
    predictor: GenrePredictor,
    movies: list[dict],
    poster_files: dict[int, Path],
    *,
    progress=None,
    chunk: int = 256,
) -> ModelOutput:
    """The model's answer for TMDb movies (``/movie/{id}`` responses), with the posters of ``poster_files``."""
    if not predictor.uses_posters:
        poster_files = {}  # nothing reads them: none is read from disk
    return _predicted_in_chunks(
        predictor, len(movies), lambda part: rows_from_tmdb(movies[part], poster_files), chunk, progress
    )


def evaluate_snapshot(
    predictor: GenrePredictor,
    snapshot_dir: Path | str,
    *,
    limit: int | None = None,
    train_ids: set[int] | None = None,
    progress=None,
) -> dict:
    """Score every movie of a snapshot folder with the champion, from all it reads: text, title,
    metadata, and the poster where one is usable."""
    snapshot = load_snapshot(snapshot_dir)
    known = {g["name"] for g in snapshot.genres.get("genres", [])}
    scored, labels, skipped = [], [], {"no_overview": 0, "no_label_in_set": 0}
    for movie in list(snapshot.movies.values())[:limit]:
        row = labels_for([g["name"] for g in movie.get("genres") or []], predictor.classes, known)
        if not (movie.get("overview") or "").strip():
            skipped["no_overview"] += 1
        elif not row.any():
            skipped["no_label_in_set"] += 1
        else:
            scored.append(movie)
            labels.append(row)
    if not scored:
        raise ValueError(f"{snapshot_dir}: no movie with an overview and a genre of the champion's label set")
    output = predict_movies(predictor, scored, snapshot_poster_files(scored, snapshot.posters_dir), progress=progress)
    report = metrics.evaluate(np.stack(labels), output.decisions, output.probabilities, predictor.classes)
    ids = [movie["id"] for movie in scored]
    return {
        **report["summary"],
        "labels": predictor.classes,
        "champion": predictor.info,
        "with_poster": int(output.used_poster.sum()),
        "skipped": skipped,
        "seen_in_training": len(train_ids & set(ids)) if train_ids is not None else None,
        "per_genre": report["per_genre"].round(4).to_dict(orient="records"),
    }


PREDICTION_COLUMNS = ["id", "title", "scored_as", "predicted_genres", "top_3", "tmdb_genres", "used_poster"]


def prediction_table(
    predictor: GenrePredictor,
    movies: list[dict],
    scored_as: list[str],
    output: ModelOutput,
) -> pd.DataFrame:
    """One row per scored movie: the decided genres, the three most probable with their probabilities,
    TMDb's genres (empty for a movie TMDb gives none), every probability, and the champion that
    answered."""
    probabilities, decided = output.probabilities, output.decisions
    by_probability = np.argsort(-probabilities, axis=1, kind="stable")
    top3 = by_probability[:, :3]
    frame = pd.DataFrame(
        {
            "id": [int(m["id"]) for m in movies],
            "title": [m.get("title") for m in movies],
            "scored_as": scored_as,
            "predicted_genres": [  # most probable first, as predict and the API list them
                [predictor.classes[j] for j in order if row[j]] for row, order in zip(decided, by_probability)
            ],
            "top_3": [
                ", ".join(f"{predictor.classes[j]} {p[j]:.2f}" for j in order) for p, order in zip(probabilities, top3)
            ],
            "tmdb_genres": [[g["name"] for g in m.get("genres") or []] for m in movies],
            "used_poster": output.used_poster,
        },
        columns=PREDICTION_COLUMNS,
    )
    for j, genre in enumerate(predictor.classes):
        frame[probability_column(genre)] = probabilities[:, j]
    frame["champion_version"] = str(predictor.info["version"])
    frame["champion_model"] = predictor.info["model"]
    frame["champion_run_id"] = predictor.info["run_id"]
    return frame


UNLABELLED, LABELLED_CHECK = "unlabelled", "labelled_check"


def movies_to_score(
    details: dict[int, dict], test_ids: list[int], check_sample: int, seed: int
) -> tuple[list[dict], list[str]]:
    """Every movie with an overview that TMDb gives no genre, then up to ``check_sample`` labelled movies
    of the test split (never trained or tuned on), drawn with ``seed``: how the champion fares on them
    says how far to trust its labels for the others."""
    unlabelled = [m for i, m in sorted(details.items()) if (m.get("overview") or "").strip() and not m.get("genres")]
    labelled = [i for i in sorted(set(test_ids)) if i in details and details[i].get("genres")]
    labelled = [i for i in labelled if (details[i].get("overview") or "").strip()]
    drawn = np.random.default_rng(seed).permutation(labelled)[:check_sample] if check_sample else []
    checks = [details[int(i)] for i in sorted(drawn)]
    return unlabelled + checks, [UNLABELLED] * len(unlabelled) + [LABELLED_CHECK] * len(checks)
