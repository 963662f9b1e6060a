"""Predicting genres with the registered champion (genre-classifier@champion), through its pyfunc model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS, metadata_fields
from genre_pipeline.dataset.labels import OTHERS
from genre_pipeline.models import metrics, tracking
from genre_pipeline.models.classifier import probability_column
from genre_pipeline.models.thresholds import apply_thresholds
from genre_pipeline.tmdb.snapshot import load_snapshot


class NoChampion(RuntimeError):
    """No model is registered as genre-classifier@champion in the tracking store."""


@dataclasses.dataclass
class Prediction:
    genres: list[str]  # the decided genres: probability at or above the genre's tuned threshold
    top: list[tuple[str, float, float]]  # the k most probable genres: (genre, probability, threshold)
    used_poster: bool
    note: str | None = None

    def as_dict(self) -> dict:
        result = {
            "genres": self.genres,
            "top": [{"genre": g, "probability": round(p, 4), "threshold": round(t, 4)} for g, p, t in self.top],
            "used_poster": self.used_poster,
        }
        return result | ({"note": self.note} if self.note else {})


class GenrePredictor:
    """The champion's pyfunc model, with what the registry says about it."""

    def __init__(self, model, info: dict):
        self.model, self.info = model, info
        classifier = model.unwrap_python_model().classifier
        self.classes, self.thresholds = list(classifier.classes), np.asarray(classifier.thresholds)
        self.uses_posters = classifier.uses_posters

    @classmethod
    def from_registry(cls, tracking_uri: str) -> "GenrePredictor":
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        client = MlflowClient()
        try:
            version = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION_ALIAS)
        except MlflowException:
            raise NoChampion(
                f"no {tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS} in {tracking_uri}: "
                "materialize the model assets first (make run)"
            ) from None
        params = client.get_run(version.run_id).data.params
        model = mlflow.pyfunc.load_model(f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS}")
        info = {
            "version": version.version,
            "run_id": version.run_id,
            "model": params["model"],
            "kind": params["kind"],
            "label_set": params["label_set"],
            "text_encoders": params.get("text_encoders"),
            "image_encoder": params["image_encoder"],
            "fine_tuned_encoders": [m for m in params.get("fine_tuned_encoders", "").split(",") if m],
        }
        return cls(model, info)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc model's output for raw input rows (see classifier.GenreClassifierModel)."""
        return self.model.predict(frame)

    def probabilities(self, output: pd.DataFrame) -> np.ndarray:
        return output[[probability_column(g) for g in self.classes]].to_numpy(dtype=np.float64)

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
        output = self.predict_frame(pd.DataFrame([row]))
        probabilities = self.probabilities(output)[0]
        order = np.argsort(-probabilities)[:top_k]
        chosen = [self.classes[j] for j in np.flatnonzero(probabilities >= self.thresholds)]
        top = [(self.classes[j], float(probabilities[j]), float(self.thresholds[j])) for j in order]
        note = output["poster_note"].iloc[0] or None
        return Prediction(chosen, top, bool(output["used_poster"].iloc[0]), note)


def labels_for(genres: list[str], classes: list[str], known_genres: set[str]) -> np.ndarray:
    """A movie's TMDb genres as a row of the champion's label set (merged genres count as Others)."""
    row = np.zeros(len(classes), dtype=np.uint8)
    for genre in genres:
        if genre in classes:
            row[classes.index(genre)] = 1
        elif OTHERS in classes and genre in known_genres:
            row[classes.index(OTHERS)] = 1
    return row


def snapshot_frame(movies: list[dict], posters_dir: Path | None) -> pd.DataFrame:
    """Snapshot movies (``/movie/{id}`` responses) as the pyfunc model's input rows; poster bytes only
    when ``posters_dir`` is given and the file exists."""
    rows = []
    for movie in movies:
        poster = None
        if posters_dir is not None and movie.get("poster_path"):
            path = posters_dir / movie["poster_path"].lstrip("/")
            poster = path.read_bytes() if path.is_file() else None
        rows.append(
            {
                "overview": movie.get("overview"),
                "tagline": movie.get("tagline"),
                "title": movie.get("title"),
                "poster": poster,
                **metadata_fields(movie),
            }
        )
    return pd.DataFrame(rows, columns=["overview", "tagline", "title", "poster", *METADATA_COLUMNS])


def evaluate_snapshot(
    predictor: GenrePredictor,
    snapshot_dir: Path | str,
    *,
    limit: int | None = None,
    train_ids: set[int] | None = None,
    progress=None,
    chunk: int = 256,
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
    parts, with_poster = [], 0
    for start in range(0, len(scored), chunk):
        frame = snapshot_frame(scored[start : start + chunk], snapshot.posters_dir if predictor.uses_posters else None)
        output = predictor.predict_frame(frame)
        parts.append(predictor.probabilities(output))
        with_poster += int(output["used_poster"].sum())
        if progress:
            progress(min(start + chunk, len(scored)), len(scored))
    probabilities = np.concatenate(parts)
    y_true = np.stack(labels)
    predictions = apply_thresholds(probabilities, predictor.thresholds)
    report = metrics.evaluate(y_true, predictions, probabilities, predictor.classes)
    ids = [movie["id"] for movie in scored]
    return {
        **report["summary"],
        "labels": predictor.classes,
        "champion": predictor.info,
        "with_poster": with_poster,
        "skipped": skipped,
        "seen_in_training": len(train_ids & set(ids)) if train_ids is not None else None,
        "per_genre": report["per_genre"].round(4).to_dict(orient="records"),
    }
