"""The TMDb client over real HTTP against the replay server on 127.0.0.1."""

import io
import logging
import time
import tracemalloc

import pytest
from PIL import Image

from genre_pipeline.images import PosterError, verify_poster
from genre_pipeline.ingestion import discover
from genre_pipeline.ingestion.details import fetch_details
from genre_pipeline.ingestion.discover import discover_year
from genre_pipeline.ingestion.posters import PosterRules, download_posters
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb.client import TMDbAuthError, TMDbClient, TMDbUnavailable
from genre_pipeline.tmdb.snapshot import load_snapshot
from genre_pipeline.tmdb.transport import RateLimiter

from .conftest import API_KEY, make_client


def test_discover_pages_through_every_page_of_a_year(replay, demo_dir):
    expected = {
        m["id"] for m in load_snapshot(demo_dir).movies.values() if (m["release_date"] or "").startswith("2019")
    }
    with make_client(replay) as client:
        result = discover_year(client, 2019)
    pages = [p["body"] for p in result.pages]
    assert [p["page"] for p in pages] == list(range(1, pages[0]["total_pages"] + 1))
    assert len(pages) >= 1 and all(len(p["results"]) <= 20 for p in pages)
    assert set(result.movie_ids) == expected
    # Discover results look like TMDb's: genre_ids, no tagline.
    first = pages[0]["results"][0]
    assert "genre_ids" in first and "tagline" not in first


def test_a_year_over_the_10000_result_cap_is_split_by_date(replay, monkeypatch):
    monkeypatch.setattr(discover, "MAX_DISCOVER_RESULTS", 5)  # pretend TMDb caps a query at 5 results
    with make_client(replay) as client:
        capped = discover_year(client, 2019)
    with make_client(replay) as client:
        monkeypatch.setattr(discover, "MAX_DISCOVER_RESULTS", 10_000)
        full = discover_year(client, 2019)
    assert sorted(capped.movie_ids) == sorted(full.movie_ids)
    assert capped.queries > 1
    assert all("primary_release_date.gte" in p["params"] for p in capped.pages)


@pytest.mark.parametrize("credential", [{"token": "wrong-token"}, {"token": None, "api_key": "wrong-key"}])
def test_a_refused_credential_is_a_clear_error_without_the_secret(replay, credential):
    with make_client(replay, **credential) as client, pytest.raises(TMDbAuthError) as raised:
        client.get_json("/configuration")
    message = str(raised.value)
    assert "TMDB_API_READ_ACCESS_TOKEN" in message and "401" in message
    assert "wrong-token" not in message and "wrong-key" not in message
    assert client.stats.failures == {"auth": 1}
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_a_missing_credential_names_the_variable_to_set(replay):
    with pytest.raises(TMDbAuthError, match="TMDB_API_READ_ACCESS_TOKEN"):
        TMDbClient(replay.api_url)


def test_api_key_in_the_query_never_reaches_logs_or_errors(replay, caplog):
    caplog.set_level(logging.DEBUG)
    # urllib3's own logger too: some libraries (the kubernetes client) quiet it to WARNING on import.
    caplog.set_level(logging.DEBUG, logger="urllib3")
    with make_client(replay, token=None, api_key=API_KEY, max_retries=0) as client:
        assert client.get_json("/movie/900001")["id"] == 900001
        with pytest.raises(TMDbUnavailable) as raised:
            client.get_bytes("http://127.0.0.1:9/nothing")  # closed port
        assert API_KEY not in repr(client)
    assert any("GET /3/movie/900001" in r.getMessage() for r in caplog.records)  # urllib3 logged the request
    assert API_KEY not in caplog.text
    assert API_KEY not in str(raised.value)


@pytest.mark.parametrize(
    "faulty_replay",
    [{"rate_limit_fraction": 1.0, "retry_after_s": 0.3, "max_per_path": 1}],
    indirect=True,
)
def test_429_is_retried_after_the_retry_after_delay(faulty_replay):
    with make_client(faulty_replay) as client:
        started = time.monotonic()
        body = client.get_json("/movie/900002")
        waited = time.monotonic() - started
    assert body["id"] == 900002
    assert client.stats.retry_reasons == {"rate_limited": 1}
    assert waited >= 0.3


@pytest.mark.parametrize(
    "faulty_replay",
    [{"server_error_fraction": 0.5, "rate_limit_fraction": 0.3, "retry_after_s": 0.01, "max_per_path": 2, "seed": 3}],
    indirect=True,
)
def test_5xx_and_429_are_recovered_for_every_movie(faulty_replay, demo_dir):
    ids = sorted(load_snapshot(demo_dir).movies)
    with make_client(faulty_replay) as client:
        result = fetch_details(client, ids, known={})
    assert not result.failed and sorted(result.details) == ids
    injected = faulty_replay.state.faults_injected
    assert injected["server_error"] > 0 and injected["rate_limit"] > 0
    assert client.stats.retries == injected["server_error"] + injected["rate_limit"]


@pytest.mark.parametrize("faulty_replay", [{"slow_fraction": 1.0, "slow_s": 1.0, "max_per_path": 1}], indirect=True)
def test_a_timeout_is_retried(faulty_replay):
    with make_client(faulty_replay, timeout_s=0.3) as client:
        assert client.get_json("/genre/movie/list")["genres"]
    assert client.stats.retry_reasons == {"timeout": 1}


@pytest.mark.parametrize("faulty_replay", [{"server_error_fraction": 1.0}], indirect=True)
def test_retries_give_up_with_a_clear_error(faulty_replay):
    with make_client(faulty_replay, max_retries=2) as client, pytest.raises(TMDbUnavailable, match="after 3 attempts"):
        client.get_json("/movie/900003")
    assert client.stats.requests == 3
    assert client.stats.failures == {"server_error": 1}


@pytest.mark.parametrize(
    "faulty_replay", [{"corrupt_image_fraction": 0.15, "truncated_image_fraction": 0.15, "seed": 1}], indirect=True
)
def test_corrupt_and_truncated_posters_are_detected_and_recorded(faulty_replay, demo_dir, tmp_path):
    store = DataStore(tmp_path / "store")
    movies = list(load_snapshot(demo_dir).movies.values())
    with make_client(faulty_replay) as client:
        frame, summary = download_posters(client, store, movies, image_base_url=f"{faulty_replay.base_url}/t/p")
    broken = (
        faulty_replay.state.faults_injected["corrupt_image"] + faulty_replay.state.faults_injected["truncated_image"]
    )
    assert broken > 0 and summary["corrupt"] == broken
    assert summary["ok"] + summary["corrupt"] == sum(1 for m in movies if m["poster_path"])
    assert summary["no_poster"] == sum(1 for m in movies if not m["poster_path"])
    stored = {p.name for p in store.poster_images_dir.iterdir()}
    corrupt_files = {path.rsplit("/", 1)[-1] for path in frame.loc[frame.status == "corrupt", "poster_path"]}
    assert stored.isdisjoint(corrupt_files)
    assert corrupt_files == {p.name for p in store.poster_rejected_dir.iterdir()}
    assert len(stored) == summary["ok"]


def test_posters_resized_to_the_requested_size(replay, demo_dir, tmp_path):
    store = DataStore(tmp_path / "store")
    movie = next(m for m in load_snapshot(demo_dir).movies.values() if m["poster_path"])
    with make_client(replay) as client:
        frame, _ = download_posters(
            client, store, [movie], image_base_url=f"{replay.base_url}/t/p", rules=PosterRules(size="w92")
        )
    assert frame.iloc[0]["status"] == "ok" and frame.iloc[0]["width"] == 92


def test_an_interrupted_run_resumes_without_refetching(replay, demo_dir, tmp_path):
    ids = sorted(load_snapshot(demo_dir).movies)

    def interrupt(done, total):
        if done == 40:
            raise KeyboardInterrupt

    with make_client(replay, tmp_path) as client, pytest.raises(KeyboardInterrupt):
        fetch_details(client, ids, known={}, progress=interrupt)
    first_run = client.stats.requests
    assert 40 <= first_run < len(ids)
    with make_client(replay, tmp_path) as client:
        result = fetch_details(client, ids, known={})
    assert sorted(result.details) == ids
    assert client.stats.cache_hits == first_run and client.stats.requests == len(ids) - first_run
    assert max(replay.state.paths.values()) == 1  # nothing was fetched twice
    with make_client(replay, tmp_path) as client:
        fetch_details(client, ids, known={})
    assert client.stats.requests == 0  # a rerun costs no requests


def test_the_rate_limit_spaces_requests():
    limiter = RateLimiter(rate_per_s=50, burst=1)
    started = time.monotonic()
    for _ in range(26):
        limiter.acquire()
    assert time.monotonic() - started >= 25 / 50


def test_retry_after_holds_back_every_thread():
    limiter = RateLimiter(rate_per_s=1000)
    limiter.pause_until(time.monotonic() + 0.2)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.19


@pytest.mark.parametrize("side", [7_000, 12_000, 14_000])  # 49 and 144 MP pass PIL's own check; 196 MP does not
def test_a_decompression_bomb_is_refused_from_its_header(side):
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 250_000
    tracemalloc.start()
    try:
        with pytest.raises(PosterError, match="megapixels|too large") as refused:
            verify_poster(buffer.getvalue())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.kind == "too_large"
    assert peak < 20_000_000  # refused before decoding: 144 MP would take 144 MB as L, 432 MB as RGB
