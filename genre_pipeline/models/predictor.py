"""Predicting genres with the registered champion (genre-classifier@champion), through its pyfunc model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline.dataset.cleaning import metadata_fields
from genre_pipeline.dataset.labels import OTHERS
from genre_pipeline.models import metrics, tracking
from genre_pipeline.models.classifier import INPUT_COLUMNS, probability_column
from genre_pipeline.models.thresholds import apply_thresholds
from genre_pipeline.tmdb.snapshot import load_snapshot


class NoChampion(RuntimeError):
    """No model is registered as genre-classifier@champion in the tracking store."""


def champion_version(client: MlflowClient, tracking_uri: str) -> str:
    """The version number genre-classifier@champion points at, or NoChampion."""
    try:
        return str(client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION_ALIAS).version)
    except MlflowException:
        raise NoChampion(
            f"no {tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS} in {tracking_uri}: "
            "materialize the model assets first (make run)"
        ) from None


@dataclasses.dataclass
class Prediction:
    genres: list[str]  # the decided genres: probability at or above the genre's own tuned threshold
    # (genre, probability, threshold), most probable first: the k most probable genres and every decided
    # one, so that no decided genre is missing from the list
    scores: list[tuple[str, float, float]]
    used_poster: bool
    poster_note: str | None = None  # why a given poster was not used
    text_note: str | None = None  # how much of a long text the text encoders read

    @property
    def notes(self) -> list[str]:
        return [note for note in (self.text_note, self.poster_note) if note]

    def scores_as_dicts(self) -> list[dict]:
        decided = set(self.genres)
        return [
            {"genre": g, "probability": round(p, 4), "threshold": round(t, 4), "decided": g in decided}
            for g, p, t in self.scores
        ]


class GenrePredictor:
    """The champion's pyfunc model, with what the registry says about it."""

    def __init__(self, model, info: dict, run_metrics: dict | None = None):
        self.model, self.info = model, info
        self.run_metrics = run_metrics or {}
        classifier = model.unwrap_python_model().classifier
        self.classes, self.thresholds = list(classifier.classes), np.asarray(classifier.thresholds)
        self.uses_posters = classifier.uses_posters
        self.reads_titles, self.reads_metadata = classifier.reads_titles, classifier.reads_metadata

    @classmethod
    def from_registry(cls, tracking_uri: str, version: str | None = None) -> "GenrePredictor":
        """The champion, or one registered version: loaded by version number, so that a champion alias
        moving during the load cannot mix two versions."""
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        client = MlflowClient()
        version = str(version or champion_version(client, tracking_uri))
        registered = client.get_model_version(tracking.REGISTERED_MODEL, version)
        run = client.get_run(registered.run_id)
        params = run.data.params
        model = mlflow.pyfunc.load_model(f"models:/{tracking.REGISTERED_MODEL}/{version}")
        info = {
            "version": str(registered.version),
            "run_id": registered.run_id,
            "model": params["model"],
            "kind": params["kind"],
            "label_set": params["label_set"],
            "text_encoders": json.loads(params.get("text_encoders", "[]")),  # logged as a JSON list
            "image_encoder": params["image_encoder"],
            "fine_tuned_encoders": [m for m in params.get("fine_tuned_encoders", "").split(",") if m],
        }
        return cls(model, info, run.data.metrics)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc model's output for raw input rows (see classifier.GenreClassifierModel)."""
        return self.model.predict(frame)

    def probabilities(self, output: pd.DataFrame) -> np.ndarray:
        return output[[probability_column(g) for g in self.classes]].to_numpy(dtype=np.float64)

    def headline_metrics(self) -> dict:
        """The registered run's validation macro-F1 (tuned thresholds) and test headline figures."""
        return {
            "validation": {"macro_f1": self.run_metrics.get(tracking.VALIDATION_METRIC)},
            "test": {key: self.run_metrics.get(f"test_{key}") for key in metrics.HEADLINE_KEYS},
        }

    def predict_rows(self, rows: list[dict], top_k: int | None = None) -> list[Prediction]:
        """One Prediction per input row (the pyfunc model's columns; ``poster`` as image bytes), listing
        the ``top_k`` most probable genres and every decided one (all genres when ``top_k`` is None)."""
        # Only the columns some row gives, with explicit Nones: a missing key would make a float NaN
        # column that the model's string schema refuses.
        columns = [c for c in INPUT_COLUMNS if any(row.get(c) is not None for row in rows)]
        output = self.predict_frame(pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns))
        text_notes = output["text_note"] if "text_note" in output else [""] * len(output)
        predictions = []
        for probabilities, used_poster, poster_note, text_note in zip(
            self.probabilities(output), output["used_poster"], output["poster_note"], text_notes
        ):
            decided = probabilities >= self.thresholds
            order = np.argsort(-probabilities, kind="stable")
            listed = [j for rank, j in enumerate(order) if top_k is None or rank < top_k or decided[j]]
            predictions.append(
                Prediction(
                    [self.classes[j] for j in np.flatnonzero(decided)],
                    [(self.classes[j], float(probabilities[j]), float(self.thresholds[j])) for j in listed],
                    bool(used_poster),
                    poster_note or None,
                    text_note or None,
                )
            )
        return predictions

    def predict(
        self,
        overview: str,
        tagline: str | None = None,
        poster: Path | str | None = None,
        top_k: int = 3,
        title: str | None = None,
        metadata: dict | None = None,
    ) -> Prediction:
        row = {"overview": overview, "tagline": tagline, "title": title, **(metadata or {})}
        if poster is not None:
            row["poster"] = Path(poster).read_bytes()
        return self.predict_rows([row], top_k=top_k)[0]


def labels_for(genres: list[str], classes: list[str], known_genres: set[str]) -> np.ndarray:
    """A movie's TMDb genres as a row of the champion's label set (merged genres count as Others)."""
    row = np.zeros(len(classes), dtype=np.uint8)
    for genre in genres:
        if genre in classes:
            row[classes.index(genre)] = 1
        elif OTHERS in classes and genre in known_genres:
            row[classes.index(OTHERS)] = 1
    return row


def movies_frame(movies: list[dict], poster_files: dict[int, Path]) -> pd.DataFrame:
    """``/movie/{id}`` responses as the pyfunc model's input rows, with the poster bytes of the movies
    ``poster_files`` gives a file for."""
    rows = []
    for movie in movies:
        path = poster_files.get(movie["id"])
        rows.append(
            {
                "overview": movie.get("overview"),
                "tagline": movie.get("tagline"),
                "title": movie.get("title"),
                "poster": path.read_bytes() if path is not None and path.is_file() else None,
                **metadata_fields(movie),
            }
        )
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))


def snapshot_poster_files(movies: list[dict], posters_dir: Path) -> dict[int, Path]:
    return {m["id"]: posters_dir / m["poster_path"].lstrip("/") for m in movies if m.get("poster_path")}


def predict_movies(
    predictor: GenrePredictor,
    movies: list[dict],
    poster_files: dict[int, Path],
    *,
    progress=None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (movies x the champion's classes) and whether each movie's poster was used,
    ``chunk`` movies at a time so that only one chunk's posters are in memory."""
    if not predictor.uses_posters:
        poster_files = {}  # nothing reads them: none is read from disk
    parts, used_poster = [], []
    for start in range(0, len(movies), chunk):
        output = predictor.predict_frame(movies_frame(movies[start : start + chunk], poster_files))
        parts.append(predictor.probabilities(output))
        used_poster.append(output["used_poster"].to_numpy(dtype=bool))
        if progress:
            progress(min(start + chunk, len(movies)), len(movies))
    if not parts:
        return np.zeros((0, len(predictor.classes))), np.zeros(0, dtype=bool)
    return np.concatenate(parts), np.concatenate(used_poster)


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
    probabilities, used_poster = predict_movies(
        predictor, scored, snapshot_poster_files(scored, snapshot.posters_dir), progress=progress
    )
    y_true = np.stack(labels)
    predictions = apply_thresholds(probabilities, predictor.thresholds)
    report = metrics.evaluate(y_true, predictions, probabilities, predictor.classes)
    ids = [movie["id"] for movie in scored]
    return {
        **report["summary"],
        "labels": predictor.classes,
        "champion": predictor.info,
        "with_poster": int(used_poster.sum()),
        "skipped": skipped,
        "seen_in_training": len(train_ids & set(ids)) if train_ids is not None else None,
        "per_genre": report["per_genre"].round(4).to_dict(orient="records"),
    }


PREDICTION_COLUMNS = ["id", "title", "scored_as", "predicted_genres", "top_3", "tmdb_genres", "used_poster"]


def prediction_table(
    predictor: GenrePredictor,
    movies: list[dict],
    scored_as: list[str],
    probabilities: np.ndarray,
    used_poster: np.ndarray,
) -> pd.DataFrame:
    """One row per scored movie: the decided genres, the three most probable with their probabilities,
    TMDb's genres (empty for a movie TMDb gives none), every probability, and the champion that
    answered."""
    decided = apply_thresholds(probabilities, predictor.thresholds).astype(bool)
    top3 = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    frame = pd.DataFrame(
        {
            "id": [int(m["id"]) for m in movies],
            "title": [m.get("title") for m in movies],
            "scored_as": scored_as,
            "predicted_genres": [[c for c, d in zip(predictor.classes, row) if d] for row in decided],
            "top_3": [
                ", ".join(f"{predictor.classes[j]} {p[j]:.2f}" for j in order) for p, order in zip(probabilities, top3)
            ],
            "tmdb_genres": [[g["name"] for g in m.get("genres") or []] for m in movies],
            "used_poster": used_poster.astype(bool),
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
