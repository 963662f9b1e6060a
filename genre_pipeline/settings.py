"""Which TMDb source to use and where data lives, read from the environment.

``TMDB_API_READ_ACCESS_TOKEN`` (or ``TMDB_API_KEY``) selects the real API,
``GENRE_PIPELINE_SNAPSHOT=DIR`` a replay of that folder, neither the demo catalog.
``TMDB_BASE_URL`` points the client at any TMDb-compatible server.
``GENRE_PIPELINE_CATALOG_DATE=YYYY-MM-DD`` replays the snapshot or demo catalog as it stood on that date.
``GENRE_PIPELINE_EXECUTOR`` picks where steps run (docs/scale-out.md), ``GENRE_PIPELINE_TRACKING_URI``
where training runs and the model registry are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.client import API_KEY_ENV, TMDB_API_URL, TOKEN_ENV
from genre_pipeline.tmdb.snapshot import snapshot_years

DATA_DIR_ENV = "GENRE_PIPELINE_DATA"
CACHE_DIR_ENV = "GENRE_PIPELINE_CACHE"
SNAPSHOT_ENV = "GENRE_PIPELINE_SNAPSHOT"
YEARS_ENV = "GENRE_PIPELINE_YEARS"
BASE_URL_ENV = "TMDB_BASE_URL"
EXECUTOR_ENV = "GENRE_PIPELINE_EXECUTOR"
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")
CELERY_BROKER_ENV = "GENRE_PIPELINE_CELERY_BROKER"
CELERY_BACKEND_ENV = "GENRE_PIPELINE_CELERY_BACKEND"
# Not MLFLOW_TRACKING_URI: MLflow rewrites that variable whenever a process sets a tracking URI, so it
# cannot tell what the user chose (a second data folder's runs would land in the first one's store).
TRACKING_URI_ENV = "GENRE_PIPELINE_TRACKING_URI"
# Serve every model's encoders on this backend instead of the one each was trained with.
ENCODER_BACKEND_ENV = "GENRE_PIPELINE_ENCODER_BACKEND"
INFERENCE_THREADS_ENV = "GENRE_PIPELINE_INFERENCE_THREADS"
# How many steps each embedding asset splits its new movies into: steps a Celery or Kubernetes
# deployment gives to different workers.
EMBEDDING_SHARDS_ENV = "GENRE_PIPELINE_EMBEDDING_SHARDS"
DEFAULT_EMBEDDING_SHARDS = 4
# The date a replayed catalog stands at: its movies released by then, its changes until then, and the
# release years and "today" of the refresh schedule follow it instead of the wall clock.
CATALOG_DATE_ENV = "GENRE_PIPELINE_CATALOG_DATE"
# API keys `genre-pipeline serve` accepts, comma-separated (beside its --api-keys-file).
API_KEYS_ENV = "GENRE_PIPELINE_API_KEYS"
FIRST_API_YEAR = 1990  # default start of the release-year range on the real API


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(DATA_DIR_ENV) or Path.cwd() / "data").expanduser().resolve()


def executor_name(env: Mapping[str, str] = os.environ) -> str:
    """The executor ``GENRE_PIPELINE_EXECUTOR`` names (``in_process`` when unset); the Celery one needs
    its broker and result backend."""
    name = env.get(EXECUTOR_ENV) or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    missing = [var for var in (CELERY_BROKER_ENV, CELERY_BACKEND_ENV) if name == "celery" and not env.get(var)]
    if missing:
        raise ValueError(f"{EXECUTOR_ENV}=celery needs {' and '.join(missing)} (e.g. redis://127.0.0.1:6379/0)")
    return name


def tracking_uri_override(env: Mapping[str, str] = os.environ) -> str | None:
    """``GENRE_PIPELINE_TRACKING_URI``: a shared MLflow server or database (docs/scale-out.md)."""
    return env.get(TRACKING_URI_ENV) or None


def encoder_backend_override(env: Mapping[str, str] = os.environ) -> str | None:
    """``GENRE_PIPELINE_ENCODER_BACKEND``: the encoder backend to serve with, whatever a model was trained on."""
    return env.get(ENCODER_BACKEND_ENV) or None


def _positive_int(env: Mapping[str, str], name: str, default: int | None, what: str) -> int | None:
    value = env.get(name)
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a positive whole number of {what}")
    return int(value)


def embedding_shards(env: Mapping[str, str] = os.environ) -> int:
    """``GENRE_PIPELINE_EMBEDDING_SHARDS``: steps per embedding asset (default 4). Read when the
    definitions load: every process of a deployment must see the same value."""
    return _positive_int(env, EMBEDDING_SHARDS_ENV, DEFAULT_EMBEDDING_SHARDS, "shards")


def inference_threads(env: Mapping[str, str] = os.environ) -> int | None:
    """``GENRE_PIPELINE_INFERENCE_THREADS``: the threads an ONNX Runtime session uses; unset, its
    default (one per physical core). ``genre-pipeline serve`` sets it to each worker's share."""
    return _positive_int(env, INFERENCE_THREADS_ENV, None, "threads")


def parse_catalog_date(value: str | None) -> dt.date | None:
    """A catalog date as the environment or a resource's config gives it (YYYY-MM-DD), or None when unset."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{CATALOG_DATE_ENV}={value!r}: expected a date as YYYY-MM-DD") from None


def catalog_date(env: Mapping[str, str] = os.environ) -> dt.date | None:
    """``GENRE_PIPELINE_CATALOG_DATE`` as a date, or None when unset."""
    return parse_catalog_date(env.get(CATALOG_DATE_ENV))


def serving_api_keys(env: Mapping[str, str] = os.environ) -> list[str]:
    """The API keys ``GENRE_PIPELINE_API_KEYS`` gives (comma-separated)."""
    return [key.strip() for key in env.get(API_KEYS_ENV, "").split(",") if key.strip()]


def tmdb_credential_variables(env: Mapping[str, str] = os.environ) -> list[str]:
    """Which of the TMDb credential and base-URL variables are set (their names, never their values)."""
    return [name for name in (TOKEN_ENV, API_KEY_ENV, BASE_URL_ENV) if env.get(name)]


def dagster_home(env: Mapping[str, str] = os.environ) -> str | None:
    return env.get("DAGSTER_HOME") or None


def encoder_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where unpacked and exported encoder weights are kept, shared by every data folder:
    ``GENRE_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/genre-pipeline`` (``~/.cache/genre-pipeline``)."""
    configured = env.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser().resolve() / "genre-pipeline"


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # "tmdb", "snapshot" or "demo"
    label: str  # shown in the UI and metadata
    slug: str  # folder name under the data dir
    snapshot_dir: str | None = None
    base_url: str | None = None


def source_label(kind: str, *, snapshot_dir: str | None = None, base_url: str | None = None) -> str:
    """How a source is named in the UI, metadata and reports."""
    if kind == "snapshot":
        return f"replay of snapshot {snapshot_dir}"
    if kind == "tmdb":
        return f"TMDb API at {base_url or TMDB_API_URL}"
    return demo_catalog.DEMO_LABEL


def choose_source(env: Mapping[str, str] = os.environ) -> Source:
    snapshot = env.get(SNAPSHOT_ENV)
    base_url = env.get(BASE_URL_ENV) or None
    if snapshot:
        path = str(Path(snapshot).expanduser().resolve())
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        label = source_label("snapshot", snapshot_dir=path)
        return Source("snapshot", label, f"snapshot-{Path(path).name}-{digest}", path)
    if base_url and not (env.get(TOKEN_ENV) or env.get(API_KEY_ENV)):
        # Falling back to the demo catalog here would answer a typo'd credential with synthetic data.
        raise ValueError(
            f"{BASE_URL_ENV} is set but neither {TOKEN_ENV} nor {API_KEY_ENV}: set the credential, "
            f"or unset {BASE_URL_ENV} for the demo catalog"
        )
    if env.get(TOKEN_ENV) or env.get(API_KEY_ENV):
        url = base_url or TMDB_API_URL
        slug = "tmdb" if url == TMDB_API_URL else "tmdb-" + hashlib.sha256(url.encode()).hexdigest()[:8]
        return Source("tmdb", source_label("tmdb", base_url=url), slug, base_url=url)
    return Source("demo", source_label("demo"), "demo")


@functools.cache
def configured_source() -> Source:
    """The source this process's environment selects, read once: the code location's partitions and
    resources and the CLI all receive this one value."""
    return choose_source(os.environ)


def year_range(source: Source, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """The release years to partition by: ``GENRE_PIPELINE_YEARS=FIRST-LAST`` or the source's own, up to
    the catalog date's year when one is set."""
    first, last = _configured_years(source, env)
    as_of = catalog_date(env)
    if as_of is not None:
        if source.kind == "tmdb":
            raise ValueError(
                f"{CATALOG_DATE_ENV} replays a snapshot or the demo catalog as of a date; the TMDb API "
                f"answers as of today: unset it"
            )
        if as_of.year < first:
            raise ValueError(f"{CATALOG_DATE_ENV}={as_of} is before the first release year {first}")
        last = min(last, as_of.year)
    return first, last


def _configured_years(source: Source, env: Mapping[str, str]) -> tuple[int, int]:
    configured = env.get(YEARS_ENV)
    if configured:
        match = re.fullmatch(r"\s*(\d{4})\s*-\s*(\d{4})?\s*", configured)
        if not match:
            raise ValueError(f"{YEARS_ENV}={configured!r}: expected FIRST-LAST (e.g. 1995-2024) or FIRST-")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else dt.date.today().year
        if last < first:
            raise ValueError(f"{YEARS_ENV}={configured!r}: the last year is before the first")
        return first, last
    if source.kind == "demo":
        return demo_catalog.FIRST_YEAR, demo_catalog.LAST_YEAR
    if source.kind == "snapshot":
        return snapshot_years(source.snapshot_dir, DataStore(default_data_dir(env) / source.slug).snapshot_years_file)
    return FIRST_API_YEAR, dt.date.today().year
