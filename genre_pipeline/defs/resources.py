"""Resources: the TMDb source and the data folder, chosen from the environment without code edits."""

import contextlib
import datetime as dt
import os
import secrets
from pathlib import Path
from typing import Iterator, Literal, Optional

import dagster as dg
import pydantic
from pydantic import Field, field_validator

from genre_pipeline import settings, tracking
from genre_pipeline.champion import registry
from genre_pipeline.dataset.labels import FULL, LabelSetName
from genre_pipeline.defs.common import config_from_dataclass, to_dataclass
from genre_pipeline.files import remove_partial_files
from genre_pipeline.models.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, EncoderRef
from genre_pipeline.models.encoders.onnx_backend import DEFAULT_BACKEND, check_backend
from genre_pipeline.monitoring.drift import DriftThresholds
from genre_pipeline.monitoring.retraining import RetrainRules
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog, lock
from genre_pipeline.tmdb.client import (
    API_KEY_ENV,
    TMDB_API_URL,
    TOKEN_ENV,
    ClientPolicy,
    TMDbAuthError,
    TMDbClient,
    TMDbUnreachable,
)
from genre_pipeline.tmdb.replay import serve_snapshot
from genre_pipeline.training.config import ModelSetup


class StorageResource(dg.ConfigurableResource):
    """The data folder of one TMDb source: ``<data_dir>/<source>``."""

    data_dir: str = Field(description="Root folder of all pipeline data (git-ignored).")
    source: str = Field(description="Folder name of the TMDb source's data under data_dir.")

    @property
    def store(self) -> DataStore:
        return DataStore(Path(self.data_dir) / self.source)


class TMDbResource(dg.ConfigurableResource, ClientPolicy):
    """Where TMDb data comes from, and how politely the client asks (ClientPolicy's fields).

    ``source`` says which: ``tmdb`` talks to the real API (or ``base_url``) with a token or key;
    ``snapshot`` starts a replay server over ``snapshot_dir`` for the duration of the step;
    ``demo`` serves the built-in, synthetic demo catalog the same way.
    """

    # Required: resource config given at launch replaces every value set in code, so a launchpad
    # config with only rate_limit_per_s would otherwise drop the credential and quietly serve the demo.
    source: Literal["tmdb", "snapshot", "demo"] = Field(
        description="tmdb (a credential, optionally base_url), snapshot (snapshot_dir) or demo (synthetic)."
    )
    api_read_access_token: Optional[str] = Field(default=None, description=f"From {TOKEN_ENV}.")
    api_key: Optional[str] = Field(default=None, description=f"From {API_KEY_ENV}.")
    base_url: Optional[str] = Field(default=None, description="A TMDb-compatible API root (TMDB_BASE_URL).")
    snapshot_dir: Optional[str] = Field(default=None, description="The snapshot folder a snapshot source replays.")
    demo_catalog_dir: Optional[str] = Field(default=None, description="Where the demo catalog is generated.")
    catalog_date: Optional[str] = Field(
        default=None,
        description=f"Replay the snapshot or demo catalog as it stood on this date, YYYY-MM-DD "
        f"({settings.CATALOG_DATE_ENV}): "
        "its movies released by then, its changes until then. Not for source 'tmdb'.",
    )

    @pydantic.model_validator(mode="after")
    def _source_has_what_it_needs(self):
        if self.catalog_date is not None:
            if self.source == "tmdb":
                raise ValueError(
                    "catalog_date replays a snapshot or the demo catalog; the TMDb API answers as of today"
                )
            settings.parse_catalog_date(self.catalog_date)  # a clear error for a bad date
        if self.source == "tmdb" and not (self.api_read_access_token or self.api_key):
            raise ValueError(f"source 'tmdb' needs a credential: set {TOKEN_ENV} or {API_KEY_ENV}")
        if self.source != "tmdb" and self.base_url:
            raise ValueError(f"base_url ({settings.BASE_URL_ENV}) is set but source is {self.source!r}, not 'tmdb'")
        if self.source == "snapshot" and not self.snapshot_dir:
            raise ValueError("source 'snapshot' needs snapshot_dir")
        return self

    @property
    def source_label(self) -> str:
        label = settings.source_label(self.source, snapshot_dir=self.snapshot_dir, base_url=self.base_url)
        return f"{label} as of {self.catalog_date}" if self.catalog_date else label

    def today(self) -> dt.date:
        """The source's today: the catalog date of a replay that has one, else the wall clock's."""
        return self.as_of or dt.date.today()

    @property
    def as_of(self) -> dt.date | None:
        return settings.parse_catalog_date(self.catalog_date)

    @contextlib.contextmanager
    def open_client(self, store: DataStore) -> Iterator[TMDbClient]:
        """A client for the step, holding the data folder's TMDb lock: one client per folder at a time,
        so two runs never double the request rate nor write the same files."""
        log = dg.get_dagster_logger()
        with lock.exclusive(
            store.tmdb_lock_file, on_wait=lambda holder: log.info(f"waiting for the TMDb lock: {holder}")
        ):
            removed = remove_partial_files(*store.ingestion_dirs)
            if removed:
                log.info(f"removed {removed} partial files a killed run left")
            with self._checked_client(store.http_cache) as client:
                yield client

    @contextlib.contextmanager
    def _checked_client(self, cache_dir: Path) -> Iterator[TMDbClient]:
        try:
            with self._client(cache_dir) as client:
                yield client
        except (TMDbAuthError, TMDbUnreachable) as error:
            # Retrying cannot fix a refused credential or a host this machine cannot reach: fail now, with
            # what to check. Rate limits and server errors keep the step's retries.
            raise dg.Failure(str(error), allow_retries=False) from None

    @contextlib.contextmanager
    def _client(self, cache_dir: Path | None) -> Iterator[TMDbClient]:
        # ClientPolicy's bounds were checked when the resource was built, before any step ran: a bad
        # value fails the run at once, naming the field, and is never retried like a network fault.
        policy = ClientPolicy(**{name: getattr(self, name) for name in ClientPolicy.model_fields})
        options = dict(cache_dir=cache_dir, policy=policy)
        if self.source == "tmdb":
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
            serve_snapshot(folder, token=token, as_of=self.as_of) as server,
            TMDbClient(
                server.api_url,
                token=token,
                credential_hint="the replay server's token",
                image_base_url=f"{server.base_url}/t/p",
                **options,
            ) as client,
        ):
            yield client


def build_resources(source: settings.Source, env=os.environ) -> dict:
    """Resources for ``source``; ``env`` gives the data folder and which credential variables are set."""
    data_dir = settings.default_data_dir(env)
    tmdb_options = {}
    if source.kind == "tmdb":
        # EnvVar keeps the secret out of the run config; only set variables may be named.
        field = {TOKEN_ENV: "api_read_access_token", API_KEY_ENV: "api_key", settings.BASE_URL_ENV: "base_url"}
        for name in settings.tmdb_credential_variables(env):
            tmdb_options[field[name]] = dg.EnvVar(name)
    elif source.kind == "snapshot":
        tmdb_options["snapshot_dir"] = source.snapshot_dir
    else:
        tmdb_options["demo_catalog_dir"] = str(data_dir / "demo-catalog")
    if source.kind != "tmdb":
        as_of = settings.catalog_date(env)
        tmdb_options["catalog_date"] = as_of.isoformat() if as_of else None
    return {
        "tmdb": TMDbResource(source=source.kind, **tmdb_options),
        "storage": StorageResource(data_dir=str(data_dir), source=source.slug),
        "quality": DataQualityResource(),
        "training": TrainingResource(),
        "monitoring": MonitoringResource(),
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

    label_set: LabelSetName = Field(
        default=FULL, description="'full' (18 genres on TMDb data) or 'merged' (12 with Others)."
    )
    text_encoders: list[str] = Field(
        default=[DEFAULT_TEXT_ENCODER],
        description="Text encoders: the bundled all-mpnet-base-v2 (default) or all-MiniLM-L6-v2 (about 5x faster, "
        "stack macro-F1 0.02 lower on the snapshot), or "
        "transformers names or local paths. "
        "The stack has members for each; text_model and fusion_model read the first.",
        min_length=1,
    )
    image_encoder: str = Field(
        default=DEFAULT_IMAGE_ENCODER, description="efficientnet-lite0, efficientnet-lite2 or resnet18."
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
    experiment: str = Field(default=tracking.DEFAULT_EXPERIMENT, description="MLflow experiment name.")
    tracking_uri: Optional[str] = Field(
        default=None, description="MLflow tracking URI; default sqlite in the data folder."
    )
    temporal_test_years: int = Field(
        default=2,
        ge=0,
        description="Each model is trained a second time on the movies released before the newest this many "
        "release years and scored on those years (a temporal split, what to expect on new movies); 0: skip.",
    )
    temporal_min_movies: int = Field(
        default=100,
        ge=1,
        description="The temporal figure is reported as not measured, with the reason, when fewer movies than "
        "this remain on either side (the movies a model can score: the image model's need a poster).",
    )
    retrain: bool = Field(
        default=False,
        description="Train every model again. Unset, a model whose training data, config, setup and training code "
        "are unchanged keeps its trained model and MLflow run (its asset says 'reused').",
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

    def tracking_uri_for(self, store: DataStore) -> str:
        """``tracking_uri`` when set, else GENRE_PIPELINE_TRACKING_URI, else the data folder's sqlite."""
        return self.tracking_uri or registry.default_tracking_uri(store)

    def fine_tunes(self) -> bool:
        return self.fine_tune if self.fine_tune is not None else self.resolved_device() == "cuda"

    def encoder_refs(self) -> tuple[tuple[EncoderRef, ...], EncoderRef]:
        """The text encoders and the image encoder, each on the configured backend."""
        return (
            tuple(EncoderRef("text", name, backend=self.encoder_backend) for name in self.text_encoders),
            EncoderRef("image", self.image_encoder, backend=self.encoder_backend),
        )

    def setup(self, store: DataStore) -> ModelSetup:
        """What the models of a run share, as a plain spec for the training code."""
        text, image = self.encoder_refs()
        return ModelSetup(
            label_set=self.label_set,
            text_encoders=text,
            image_encoder=image,
            device=self.resolved_device(),
            fine_tune=self.fine_tunes(),
            tracking_uri=self.tracking_uri_for(store),
            experiment=self.experiment,
            temporal_test_years=self.temporal_test_years,
            temporal_min_movies=self.temporal_min_movies,
            retrain=self.retrain,
        )


DriftConfig = config_from_dataclass(DriftThresholds, "DriftConfig")
RetrainingConfig = config_from_dataclass(RetrainRules, "RetrainingConfig")


class MonitoringResource(dg.ConfigurableResource):
    """How a refresh watches the champion and when the models retrain: drift thresholds (the drift
    checks warn past them) and the retraining gate's rules. A resource, not run config, so that the runs
    declarative automation starts use them too."""

    drift: DriftConfig = Field(default_factory=DriftConfig, description=DriftThresholds.__doc__)
    retraining: RetrainingConfig = Field(default_factory=RetrainingConfig, description=RetrainRules.__doc__)
    bootstrap_resamples: int = Field(
        default=1000, ge=100, description="Resamples of the new movies for the prequential macro-F1's 95% interval."
    )

    def thresholds(self) -> DriftThresholds:
        return to_dataclass(DriftThresholds, self.drift)

    def rules(self) -> RetrainRules:
        return to_dataclass(RetrainRules, self.retraining)
