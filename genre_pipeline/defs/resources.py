"""Resources: the TMDb source and the data folder, chosen from the environment without code edits."""

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field, field_validator

from genre_pipeline import settings
from genre_pipeline.models.encoders import DEFAULT_TEXT_ENCODER
from genre_pipeline.models.onnx_backend import DEFAULT_BACKEND, check_backend
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.client import API_KEY_ENV, TMDB_API_URL, TOKEN_ENV, TMDbAuthError, TMDbClient
from genre_pipeline.tmdb.replay import serve_snapshot


class StorageResource(dg.ConfigurableResource):
    """The data folder of one TMDb source: ``<data_dir>/<source>``."""

    data_dir: str = Field(description="Root folder of all pipeline data (git-ignored).")
    source: str = Field(description="Folder name of the TMDb source's data under data_dir.")

    @property
    def store(self) -> DataStore:
        return DataStore(Path(self.data_dir) / self.source)


class TMDbResource(dg.ConfigurableResource):
    """Where TMDb data comes from and how politely the client asks.

    With a token or key it talks to the real API (or ``base_url``); with ``snapshot_dir``
    it starts a replay server over that folder for the duration of the step; with
    neither it serves the built-in, synthetic demo catalog the same way.
    """

    api_read_access_token: Optional[str] = Field(default=None, description=f"From {TOKEN_ENV}.")
    api_key: Optional[str] = Field(default=None, description=f"From {API_KEY_ENV}.")
    base_url: Optional[str] = Field(default=None, description="A TMDb-compatible API root (TMDB_BASE_URL).")
    snapshot_dir: Optional[str] = Field(default=None, description="Replay this snapshot folder instead.")
    demo_catalog_dir: Optional[str] = Field(default=None, description="Where the demo catalog is generated.")
    rate_limit_per_s: float = Field(default=35.0, description="Client-side limit, under TMDb's ~40 requests/s.")
    max_workers: int = Field(default=8, description="Concurrent requests for details and posters.")
    timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 0.5

    @property
    def source_kind(self) -> str:
        if self.snapshot_dir:
            return "snapshot"
        return "tmdb" if self.api_read_access_token or self.api_key else "demo"

    @property
    def source_label(self) -> str:
        return settings.source_label(self.source_kind, snapshot_dir=self.snapshot_dir, base_url=self.base_url)

    @contextlib.contextmanager
    def open_client(self, cache_dir: Path | None) -> Iterator[TMDbClient]:
        try:
            with self._client(cache_dir) as client:
                yield client
        except TMDbAuthError as error:
            # Retrying cannot fix a refused credential: fail now, with the variable to set.
            raise dg.Failure(str(error), allow_retries=False) from None

    @contextlib.contextmanager
    def _client(self, cache_dir: Path | None) -> Iterator[TMDbClient]:
        options = dict(
            cache_dir=cache_dir,
            rate_limit_per_s=self.rate_limit_per_s,
            max_workers=self.max_workers,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
        )
        if self.source_kind == "tmdb":
            with TMDbClient(
                self.base_url or TMDB_API_URL, token=self.api_read_access_token, api_key=self.api_key, **options
            ) as client:
                yield client
            return
        folder = self.snapshot_dir
        if folder is None:
            folder = self.demo_catalog_dir or str(settings.default_data_dir() / "demo-catalog")
            demo_catalog.generate(folder)
        # A fresh local credential per server: the replay checks it as TMDb would.
        token = secrets.token_urlsafe(24)
        with (
            serve_snapshot(folder, token=token) as server,
            TMDbClient(
                server.api_url,
                token=token,
                credential_hint="the replay server's token",
                image_base_url=f"{server.base_url}/t/p",
                **options,
            ) as client,
        ):
            yield client


def build_resources(env=os.environ) -> dict:
    """Resources for the source the environment selects (see genre_pipeline.settings)."""
    source = settings.choose_source(env)
    data_dir = settings.default_data_dir(env)
    tmdb_options = {}
    if source.kind == "tmdb":
        # EnvVar keeps the secret out of the run config; only set variables may be named.
        if env.get(TOKEN_ENV):
            tmdb_options["api_read_access_token"] = dg.EnvVar(TOKEN_ENV)
        if env.get(API_KEY_ENV):
            tmdb_options["api_key"] = dg.EnvVar(API_KEY_ENV)
        if env.get(settings.BASE_URL_ENV):
            tmdb_options["base_url"] = dg.EnvVar(settings.BASE_URL_ENV)
    elif source.kind == "snapshot":
        tmdb_options["snapshot_dir"] = source.snapshot_dir
    else:
        tmdb_options["demo_catalog_dir"] = str(data_dir / "demo-catalog")
    return {
        "tmdb": TMDbResource(**tmdb_options),
        "storage": StorageResource(data_dir=str(data_dir), source=source.slug),
        "quality": DataQualityResource(),
        "training": TrainingResource(),
    }


class DataQualityResource(dg.ConfigurableResource):
    """Thresholds of the data-set asset checks."""

    min_poster_ok_rate: float = Field(
        default=0.9, description="Share of movies with a poster_path whose poster must verify as ok."
    )
    max_drop_fraction: float = Field(
        default=0.25, description="Warn when one cleaning rule drops more than this share of the rows."
    )


class TrainingResource(dg.ConfigurableResource):
    """What every model asset shares: label set, encoders, device and MLflow tracking."""

    label_set: str = Field(default="full", description="'full' (18 genres on TMDb data) or 'merged' (12 with Others).")
    text_encoders: list[str] = Field(
        default=[DEFAULT_TEXT_ENCODER],
        description="Text encoders: the bundled all-mpnet-base-v2 (default) or all-MiniLM-L6-v2 (5x faster), or "
        "transformers names or local paths. "
        "The stack has members for each; text_model and fusion_model read the first.",
        min_length=1,
    )
    image_encoder: str = Field(
        default="efficientnet-lite0", description="efficientnet-lite0, efficientnet-lite2 or resnet18."
    )
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu' or 'cuda'.")
    encoder_backend: str = Field(
        default=DEFAULT_BACKEND,
        description="How frozen encoders embed on CPU: 'torch' (PyTorch fp32), 'onnx' (ONNX Runtime fp32) or "
        "'onnx-int8' (int8 weights where they keep the embeddings within the accuracy guard). CUDA keeps PyTorch.",
    )
    fine_tune: Optional[bool] = Field(
        default=None,
        description="Fine-tune the encoders with the heads; unset: on CUDA only (on CPU the heads train on "
        "cached embeddings of frozen encoders).",
    )
    experiment: str = Field(default="genre-pipeline", description="MLflow experiment name.")
    tracking_uri: Optional[str] = Field(
        default=None, description="MLflow tracking URI; default sqlite in the data folder."
    )

    @field_validator("encoder_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_backend(value)

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def fine_tunes(self) -> bool:
        return self.fine_tune if self.fine_tune is not None else self.resolved_device() == "cuda"
