"""Predicting genres with a registered model (the champion, genre-classifier@champion, by default)
through its pyfunc model, with what the registry says about it. Every caller reads the logged model's
own answer (``ModelOutput``: probabilities and the decisions it made at its tuned thresholds) and takes
its classes and thresholds from the model's logged metadata."""

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
from genre_pipeline.models.movie import (
    INPUT_COLUMNS,
    INPUTS_CHECKED,
    MODEL_METADATA_KEYS,
    decision_column,
    probability_column,
)


@dataclasses.dataclass
class ModelOutput:
    """The logged model's answer for some movies (rows), its classes in order (columns)."""

    probabilities: np.ndarray  # float64
    decisions: np.ndarray  # bool: probability at or above the genre's tuned threshold
    used_poster: np.ndarray  # bool per movie
    poster_notes: list[str]  # why a given poster was not used ("" when it was, or none was given)
    text_notes: list[str]  # how much of a long text the text encoders read ("" when all of it)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, classes: list[str]) -> "ModelOutput":
        return cls(
            frame[[probability_column(g) for g in classes]].to_numpy(dtype=np.float64),
            frame[[decision_column(g) for g in classes]].to_numpy(dtype=bool),
            frame["used_poster"].to_numpy(dtype=bool),
            frame["poster_note"].tolist(),
            frame["text_note"].tolist(),
        )

    @classmethod
    def concatenate(cls, parts: list["ModelOutput"], n_classes: int) -> "ModelOutput":
        if not parts:
            return cls(np.zeros((0, n_classes)), np.zeros((0, n_classes), dtype=bool), np.zeros(0, dtype=bool), [], [])
        return cls(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.decisions for p in parts]),
            np.concatenate([p.used_poster for p in parts]),
            [note for p in parts for note in p.poster_notes],
            [note for p in parts for note in p.text_notes],
        )


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
        logged = (model.metadata.metadata or {}) if model.metadata else {}
        missing = [key for key in MODEL_METADATA_KEYS if key not in logged]
        if missing:
            which = info.get("model_uri") or f"{registry.REGISTERED_MODEL} v{info.get('version')}"
            raise ValueError(f"{which} was logged without {', '.join(missing)} in its MLflow metadata: retrain it")
        self.classes, self.thresholds = list(logged["classes"]), np.asarray(logged["thresholds"], dtype=np.float64)
        reads = set(logged["reads"])
        self.uses_posters, self.reads_titles, self.reads_metadata = (
            x in reads for x in ("poster", "title", "metadata")
        )

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

    def predict_frame(self, frame: pd.DataFrame, *, inputs_checked: bool = False) -> ModelOutput:
        """The logged model's answer for raw input rows (the columns of ``movie.INPUT_COLUMNS``);
        ``inputs_checked``: the caller checked every row (``movie.problems``), the model need not again."""
        params = {INPUTS_CHECKED: True} if inputs_checked else None
        return ModelOutput.from_frame(self.model.predict(frame, params=params), self.classes)

    def reuse_embeddings(self, known) -> None:
        """Let the model's frozen encoders take known embeddings instead of encoding those inputs again
        (``pyfunc.GenreClassifierModel.reuse_embeddings``; ``scoring.reusing_store_embeddings``)."""
        self.model.unwrap_python_model().reuse_embeddings(known)

    def headline_metrics(self) -> dict:
        """The registered run's validation macro-F1 (tuned thresholds) and test headline figures."""
        return {
            "validation": {"macro_f1": self.run_metrics.get(tracking.VALIDATION_METRIC)},
            "test": {key: self.run_metrics.get(f"test_{key}") for key in metrics.HEADLINE_KEYS},
        }

    def predict_rows(
        self, rows: list[dict], top_k: int | None = None, *, inputs_checked: bool = False
    ) -> list[Prediction]:
        """One Prediction per input row (the pyfunc model's columns; ``poster`` as image bytes), listing
        the ``top_k`` most probable genres and every decided one (all genres when ``top_k`` is None)."""
        # Only the columns some row gives, with explicit Nones: a missing key would make a float NaN
        # column that the model's string schema refuses.
        columns = [c for c in INPUT_COLUMNS if any(row.get(c) is not None for row in rows)]
        frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
        output = self.predict_frame(frame, inputs_checked=inputs_checked)
        predictions = []
        for probabilities, decided, used_poster, poster_note, text_note in zip(
            output.probabilities, output.decisions, output.used_poster, output.poster_notes, output.text_notes
        ):
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
        inputs_checked: bool = False,
    ) -> Prediction:
        row = {"overview": overview, "tagline": tagline, "title": title, **(metadata or {})}
        if poster is not None:
            row["poster"] = Path(poster).read_bytes()
        return self.predict_rows([row], top_k=top_k, inputs_checked=inputs_checked)[0]
