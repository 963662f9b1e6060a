"""Predicting genres with the registered champion (genre-classifier@champion)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genre_pipeline.dataset.cleaning import model_text, normalize_text
from genre_pipeline.dataset.labels import OTHERS
from genre_pipeline.models import finetune, metrics, tracking
from genre_pipeline.models.encoders import ImageEncoder, TextEncoder
from genre_pipeline.models.training import apply_thresholds
from genre_pipeline.posters import PosterError, load_poster
from genre_pipeline.tmdb.snapshot import load_snapshot


class NoChampion(RuntimeError):
    """No model is registered as genre-classifier@champion in the tracking store."""


@dataclasses.dataclass
class Prediction:
    genres: list[str]  # above each genre's tuned threshold
    top: list[tuple[str, float]]
    used_poster: bool
    note: str | None = None

    def as_dict(self) -> dict:
        return {
            "genres": self.genres,
            "top": [{"genre": g, "probability": round(p, 4)} for g, p in self.top],
            "used_poster": self.used_poster,
            "note": self.note,
        }


class GenrePredictor:
    def __init__(
        self,
        model: torch.nn.Module,
        kind: str,
        classes: list[str],
        thresholds: np.ndarray,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder | None,
        info: dict,
    ):
        # The registry holds a torch.export program traced in inference mode: it has no train/eval switch.
        self.model, self.kind, self.classes, self.thresholds = model, kind, classes, thresholds
        self.text_encoder, self.image_encoder, self.info = text_encoder, image_encoder, info

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
        report_file = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="report/report.json")
        report = json.loads(Path(report_file).read_text())
        model = mlflow.pytorch.load_model(
            f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS}", map_location="cpu"
        )
        kind = params["kind"]
        fine_tuned = [m for m in params.get("fine_tuned_encoders", "").split(",") if m]

        def fine_tuned_file(name: str) -> str:
            return mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=f"{finetune.ENCODERS_ARTIFACT}/{name}"
            )

        text_encoder = TextEncoder(
            fine_tuned_file(finetune.TEXT_ENCODER_DIR) if "text" in fine_tuned else params["text_encoder"]
        )
        image_encoder = None
        if kind.endswith("fusion"):
            image_encoder = ImageEncoder(
                params["image_encoder"],
                weights_file=fine_tuned_file(finetune.IMAGE_ENCODER_FILE) if "image" in fine_tuned else None,
            )
        info = {
            "version": version.version,
            "run_id": version.run_id,
            "model": params["model"],
            "kind": kind,
            "label_set": params["label_set"],
            "text_encoder": params["text_encoder"],
            "image_encoder": params["image_encoder"] if image_encoder else None,
            "fine_tuned_encoders": fine_tuned,
        }
        classes = report["classes"]
        thresholds = np.array([report["thresholds"][c] for c in classes])
        return cls(model, kind, classes, thresholds, text_encoder, image_encoder, info)

    @property
    def uses_posters(self) -> bool:
        return self.image_encoder is not None

    def probabilities(self, texts: list[str], posters: list | None = None) -> np.ndarray:
        """Probabilities per genre; ``posters`` holds a verified PIL image or None per text."""
        features = self.text_encoder.encode(texts)
        if self.uses_posters:
            posters = posters or [None] * len(texts)
            image = np.zeros((len(texts), self.image_encoder.dim), dtype=np.float32)
            present = [n for n, p in enumerate(posters) if p is not None]
            if present:
                image[present] = self.image_encoder.encode([posters[n] for n in present])
            has_poster = np.array([[p is not None] for p in posters], dtype=np.float32)
            features = np.hstack([features, image, has_poster])
        with torch.inference_mode():
            return torch.sigmoid(self.model(torch.from_numpy(features))).numpy()

    def predict(
        self, overview: str, tagline: str | None = None, poster: Path | str | None = None, top_k: int = 3
    ) -> Prediction:
        text = model_text(normalize_text(overview), normalize_text(tagline))
        if not text:
            raise ValueError("the overview is empty: give the movie's plot overview")
        image, note = None, None
        if poster is not None:
            if not self.uses_posters:
                note = f"the champion ({self.info['model']}) reads text only: the poster was not used"
            else:
                try:
                    image = load_poster(poster).image
                except PosterError as error:
                    note = f"poster not usable ({error}): text-only prediction"
        probabilities = self.probabilities([text], [image])[0]
        order = np.argsort(-probabilities)[:top_k]
        chosen = [self.classes[j] for j in np.flatnonzero(probabilities >= self.thresholds)]
        return Prediction(chosen, [(self.classes[j], float(probabilities[j])) for j in order], image is not None, note)


def labels_for(genres: list[str], classes: list[str], known_genres: set[str]) -> np.ndarray:
    """A movie's TMDb genres as a row of the champion's label set (merged genres count as Others)."""
    row = np.zeros(len(classes), dtype=np.uint8)
    for genre in genres:
        if genre in classes:
            row[classes.index(genre)] = 1
        elif OTHERS in classes and genre in known_genres:
            row[classes.index(OTHERS)] = 1
    return row


def evaluate_snapshot(
    predictor: GenrePredictor,
    snapshot_dir: Path | str,
    *,
    limit: int | None = None,
    train_ids: set[int] | None = None,
    progress=None,
) -> dict:
    """Score every movie of a snapshot folder with the champion; fusion where a poster is usable."""
    snapshot = load_snapshot(snapshot_dir)
    known = {g["name"] for g in snapshot.genres.get("genres", [])}
    rows, texts, posters, skipped = [], [], [], {"no_overview": 0, "no_label_in_set": 0}
    for movie in list(snapshot.movies.values())[:limit]:
        text = model_text(normalize_text(movie.get("overview")), normalize_text(movie.get("tagline")))
        labels = labels_for([g["name"] for g in movie.get("genres") or []], predictor.classes, known)
        if not text:
            skipped["no_overview"] += 1
            continue
        if not labels.any():
            skipped["no_label_in_set"] += 1
            continue
        poster = None
        if predictor.uses_posters and movie.get("poster_path"):
            try:
                poster = load_poster(snapshot.posters_dir / movie["poster_path"].lstrip("/")).image
            except PosterError:
                poster = None
        rows.append((movie["id"], labels))
        texts.append(text)
        posters.append(poster)
    if not rows:
        raise ValueError(f"{snapshot_dir}: no movie with an overview and a genre of the champion's label set")
    parts, chunk = [], 512
    for start in range(0, len(texts), chunk):
        parts.append(predictor.probabilities(texts[start : start + chunk], posters[start : start + chunk]))
        if progress:
            progress(min(start + chunk, len(texts)), len(texts))
    probabilities = np.concatenate(parts)
    y_true = np.stack([labels for _, labels in rows])
    predictions = apply_thresholds(probabilities, predictor.thresholds)
    report = metrics.evaluate(y_true, predictions, probabilities, predictor.classes)
    summary = report["summary"]
    ids = [movie_id for movie_id, _ in rows]
    return {
        **summary,
        "labels": predictor.classes,
        "champion": predictor.info,
        "with_poster": sum(p is not None for p in posters) if predictor.uses_posters else 0,
        "skipped": skipped,
        "seen_in_training": len(train_ids & set(ids)) if train_ids is not None else None,
        "per_genre": report["per_genre"].round(4).to_dict(orient="records"),
    }
