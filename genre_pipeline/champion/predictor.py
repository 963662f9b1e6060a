"""Predicting genres with a registered model (the champion, genre-classifier@champion, by default)
through its pyfunc model, with what the registry says about it."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from genre_pipeline import tracking
from genre_pipeline.champion import registry
from genre_pipeline.models import metrics
from genre_pipeline.models.movie import INPUT_COLUMNS, probability_column


@dataclasses.dataclass
class Prediction:
    # the decided genres, most probable first: probability at or above the genre's own tuned threshold
    genres: list[str]
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


def _model_location(client: MlflowClient, registered) -> str:
    """A registered version's model folder when its artifacts are on this machine's disk: loaded in place
    rather than copied to a temporary folder first (0.8 s of a server's start-up on the snapshot
    champion); else its models:/ URI, which MLflow downloads."""
    by_version = f"models:/{registry.REGISTERED_MODEL}/{registered.version}"
    if not registered.source.startswith("models:/m-"):  # a version registered from a run's path
        return by_version
    location = client.get_logged_model(registered.source.removeprefix("models:/")).artifact_location
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in ("", "file"):
        return by_version
    folder = Path(urllib.request.url2pathname(parsed.path))
    return str(folder) if (folder / "MLmodel").is_file() else by_version


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
    def from_model_uri(cls, model_uri: str) -> "GenrePredictor":
        """A logged model that need not be registered (a candidate), for scoring."""
        return cls(mlflow.pyfunc.load_model(model_uri), {"model_uri": model_uri})

    @classmethod
    def from_registry(cls, tracking_uri: str, version: str | None = None) -> "GenrePredictor":
        """The champion, or one registered version: loaded by version number, so that a champion alias
        moving during the load cannot mix two versions."""
        tracking.use_store(tracking_uri)
        client = MlflowClient()
        version = str(version or registry.champion_version(client, tracking_uri))
        registered = client.get_model_version(registry.REGISTERED_MODEL, version)
        run = client.get_run(registered.run_id)
        params = run.data.params
        model = mlflow.pyfunc.load_model(_model_location(client, registered))
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
                    [self.classes[j] for j in order if decided[j]],
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
