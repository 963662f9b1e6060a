"""Where one TMDb source's files live, ingested and derived: ``<data_dir>/<source slug>/``."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd

from genre_pipeline.files import atomic_write_bytes


class DataStore:
    """Paths and readers/writers for one source's data; every write is atomic."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    http_cache = property(lambda self: self.root / "http_cache")
    snapshot_years_file = property(lambda self: self.root / "snapshot_years.json")  # a snapshot source's years
    tmdb_lock_file = property(lambda self: self.root / "tmdb.lock")
    raw_dir = property(lambda self: self.root / "raw")
    discover_dir = property(lambda self: self.root / "raw" / "discover")
    details_file = property(lambda self: self.root / "details" / "movie_details.jsonl")
    details_state_file = property(lambda self: self.root / "details" / "state.json")
    poster_images_dir = property(lambda self: self.root / "posters" / "images")
    poster_rejected_dir = property(lambda self: self.root / "posters" / "rejected")
    poster_status_file = property(lambda self: self.root / "posters" / "poster_status.parquet")
    dataset_dir = property(lambda self: self.root / "dataset")
    movies_clean_file = property(lambda self: self.root / "dataset" / "movies_clean.parquet")
    cleaning_report_file = property(lambda self: self.root / "dataset" / "cleaning_report.json")
    label_sets_file = property(lambda self: self.root / "dataset" / "label_sets.json")
    splits_file = property(lambda self: self.root / "dataset" / "splits.parquet")
    split_history_file = property(lambda self: self.root / "dataset" / "split_history.parquet")
    eda_dir = property(lambda self: self.root / "reports" / "eda")
    embeddings_dir = property(lambda self: self.root / "embeddings")
    models_dir = property(lambda self: self.root / "models")
    genre_predictions_file = property(lambda self: self.root / "predictions" / "genre_predictions.parquet")
    prequential_file = property(lambda self: self.root / "monitoring" / "champion_on_new_movies.json")
    retraining_state_file = property(lambda self: self.root / "monitoring" / "retraining_state.json")
    mlflow_db = property(lambda self: self.root / "mlflow.db")
    mlflow_artifacts_dir = property(lambda self: self.root / "mlartifacts")

    @property
    def ingestion_dirs(self) -> tuple[Path, ...]:
        """What only the TMDb lock's holder writes."""
        return self.http_cache, self.raw_dir, self.details_file.parent, self.poster_images_dir.parent

    def embeddings_file(self, modality: str, encoder: str, backend: str) -> Path:
        """One cache per encoder and inference backend (their embeddings differ slightly): the readable
        basename, plus a hash of the full name or path so that two encoders with the same basename
        (org-a/model, org-b/model) never share a file."""
        slug = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in encoder.rsplit("/", 1)[-1])
        digest = hashlib.sha256(encoder.encode()).hexdigest()[:8]
        return self.embeddings_dir / f"{modality}-{slug}-{backend}-{digest}.npz"

    def model_dir(self, model: str) -> Path:
        """A model's report files (report.json, per-genre table, plots, probabilities)."""
        return self.models_dir / model

    def model_report_file(self, model: str) -> Path:
        return self.model_dir(model) / "report.json"

    tmdb_genres_file = property(lambda self: self.raw_dir / "genres.json")
    tmdb_configuration_file = property(lambda self: self.raw_dir / "configuration.json")
    model_comparison_file = property(lambda self: self.models_dir / "model_comparison.csv")

    def labels_file(self, label_set: str) -> Path:
        return self.dataset_dir / f"labels_{label_set}.parquet"

    def discover_file(self, year: int | str) -> Path:
        return self.discover_dir / f"{year}.jsonl"

    def write_json(self, path: Path, payload) -> None:
        atomic_write_bytes(path, json.dumps(payload, ensure_ascii=False).encode())

    def read_json(self, path: Path, default=None):
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default

    # --- discover ------------------------------------------------------------------
    def write_discover_pages(self, year: int, pages: list[dict]) -> None:
        lines = "".join(json.dumps(page, ensure_ascii=False) + "\n" for page in pages)
        atomic_write_bytes(self.discover_file(year), lines.encode())

    def read_discover_pages(self, year: int | str) -> list[dict]:
        path = self.discover_file(year)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def discovered_movies(self) -> dict[int, dict]:
        """Every movie on every stored discover page, by id (first sighting wins)."""
        movies: dict[int, dict] = {}
        for path in sorted(self.discover_dir.glob("*.jsonl")):
            for page in self.read_discover_pages(path.stem):
                for result in page["body"].get("results", []):
                    movies.setdefault(result["id"], result)
        return movies

    # --- details -------------------------------------------------------------------
    def read_details(self) -> dict[int, dict]:
        if not self.details_file.is_file():
            return {}
        details = {}
        for line in self.details_file.read_text(encoding="utf-8").splitlines():
            if line:
                movie = json.loads(line)
                details[movie["id"]] = movie
        return details

    def write_details(self, details: dict[int, dict]) -> None:
        lines = "".join(json.dumps(details[i], ensure_ascii=False, sort_keys=True) + "\n" for i in sorted(details))
        atomic_write_bytes(self.details_file, lines.encode())

    # --- tables --------------------------------------------------------------------
    @staticmethod
    def write_table(path: Path, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(path, buffer.getvalue())

    @staticmethod
    def read_table(path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist yet: materialize the asset that writes it first")
        return pd.read_parquet(path)


def content_fingerprint(payload) -> str:
    """A short, order-stable hash of JSON-able content, used as a Dagster data version."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (columns, values and row order)."""
    return content_fingerprint(frame.to_json(orient="split", index=False, default_handler=str))
