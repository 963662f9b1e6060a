"""Shared fixtures: a small demo catalog the tests generate, and replay servers over it."""

import shutil

import pytest

from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.client import TMDbClient
from genre_pipeline.tmdb.replay import Faults, serve_snapshot

TOKEN = "test-token-5f1d9c"
API_KEY = "test-api-key-0b7e42"
DEMO_MOVIES = 120


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return demo_catalog.generate(tmp_path_factory.mktemp("demo") / "catalog", n_movies=DEMO_MOVIES)


@pytest.fixture
def catalog_copy(demo_dir, tmp_path):
    """A private copy that a test may edit (changes.jsonl, a new tagline)."""
    return shutil.copytree(demo_dir, tmp_path / "catalog")


@pytest.fixture
def replay(demo_dir):
    with serve_snapshot(demo_dir, token=TOKEN, api_key=API_KEY) as server:
        yield server


def make_client(server, tmp_path=None, **options) -> TMDbClient:
    defaults = dict(token=TOKEN, rate_limit_per_s=500, backoff_base_s=0.01, timeout_s=5,
                    cache_dir=(tmp_path / "cache") if tmp_path else None)
    return TMDbClient(server.api_url, **{**defaults, **options})


@pytest.fixture
def faulty_replay(demo_dir, request):
    with serve_snapshot(demo_dir, token=TOKEN, faults=Faults(**request.param)) as server:
        yield server
