"""Ingestion that survives a killed run, a hostile server and a bad config, on the demo catalog."""

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from genre_pipeline import settings
from genre_pipeline.defs.resources import TMDbResource
from genre_pipeline.files import atomic_write_bytes, content_key
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import lock
from genre_pipeline.tmdb.client import ClientPolicy, TMDbClient, TMDbUnavailable, TMDbUnreachable
from genre_pipeline.tmdb.faults import Faults
from genre_pipeline.tmdb.replay import serve_snapshot
from genre_pipeline.tmdb.snapshot import load_snapshot
from genre_pipeline.tmdb.transport import ResponseCache

from .conftest import BIN, TOKEN, free_port, make_client

REPO = Path(__file__).resolve().parents[1]


# --- the client against a hostile server ------------------------------------------------------
def test_timeout_is_a_deadline_for_a_server_that_trickles(demo_dir):
    with serve_snapshot(demo_dir, token=TOKEN, faults=Faults(drip_fraction=1.0, drip_interval_s=0.5)) as server:
        with make_client(server, timeout_s=2, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(TMDbUnavailable, match="no complete answer within 2s") as failure:
                client.get_json("/configuration")  # ~500 bytes: over four minutes at one byte per 0.5 s
            elapsed = time.monotonic() - started
    assert failure.value.kind == "timeout"
    assert elapsed < 4, elapsed


def test_retry_after_is_capped(demo_dir):
    faults = Faults(rate_limit_fraction=1.0, retry_after_s=86_400, max_per_path=1)
    with serve_snapshot(demo_dir, token=TOKEN, faults=faults) as server:
        with make_client(server, max_retry_after_s=0.5) as client:
            started = time.monotonic()
            assert "images" in client.get_json("/configuration")
            elapsed = time.monotonic() - started
            assert client.stats.retry_reasons["rate_limited"] == 1
    assert elapsed < 5, elapsed


@pytest.mark.parametrize(
    "setting", [{"max_workers": 0}, {"rate_limit_per_s": -1}, {"max_retries": -1}, {"timeout_s": 0}]
)
def test_bad_client_settings_are_refused_naming_the_setting(replay, setting):
    (name,) = setting
    with pytest.raises(ValueError, match=name):
        TMDbClient(replay.api_url, token=TOKEN, policy=ClientPolicy(**setting))
    with pytest.raises(ValueError, match=name):
        TMDbResource(source="snapshot", snapshot_dir="x", **setting)


def test_a_host_that_cannot_be_reached_fails_in_seconds_naming_host_and_cause():
    port = free_port()  # nothing listens there: every connection is refused
    with TMDbClient(f"http://127.0.0.1:{port}/3", token=TOKEN) as client:
        started = time.monotonic()
        with pytest.raises(TMDbUnreachable, match="cannot reach TMDb at 127.0.0.1: the connection was refused"):
            client.get_json("/configuration")
        assert time.monotonic() - started < 10
    # A name that never resolves (RFC 6761's .invalid) fails the same way, naming DNS.
    with TMDbClient("http://tmdb.invalid/3", token=TOKEN) as client:
        with pytest.raises(TMDbUnreachable, match="tmdb.invalid: its name does not resolve"):
            client.get_json("/configuration")


def test_an_unreachable_tmdb_fails_the_first_step_once_without_dagster_retries(tmp_path):
    """As a user runs it: a credential, an address nothing answers at; the run ends in well under a minute
    with the sentence, not after Dagster's retries (30 s apart) of the full HTTP retry schedule."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "GENRE_PIPELINE_"))} | {
        "TMDB_API_READ_ACCESS_TOKEN": TOKEN,
        "TMDB_BASE_URL": f"http://127.0.0.1:{free_port()}/3",
        "GENRE_PIPELINE_DATA": str(tmp_path / "data"),
        "GENRE_PIPELINE_YEARS": "2020-2021",
        "DAGSTER_HOME": str(tmp_path),
    }
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    started = time.monotonic()
    result = subprocess.run(
        [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", "--select", "tmdb_configuration"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "cannot reach TMDb at 127.0.0.1: the connection was refused" in output
    assert "STEP_UP_FOR_RETRY" not in output and TOKEN not in output
    assert time.monotonic() - started < 90


def test_a_base_url_without_a_credential_is_an_error_not_the_demo_catalog(tmp_path):
    with pytest.raises(ValueError, match="TMDB_BASE_URL is set but neither TMDB_API_READ_ACCESS_TOKEN"):
        settings.choose_source({"TMDB_BASE_URL": "http://127.0.0.1:9/3"})
    with pytest.raises(ValueError, match="needs a credential"):
        TMDbResource(source="tmdb", base_url="http://127.0.0.1:9/3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMDB_")} | {
        "TMDB_BASE_URL": "http://127.0.0.1:9/3",
        "GENRE_PIPELINE_DATA": str(tmp_path),
    }
    result = subprocess.run([BIN / "genre-pipeline", "years"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "TMDB_BASE_URL is set but neither" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was generated or fetched


def test_written_files_get_the_umask_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "a" / "file.json", b"{}")
    assert stat.S_IMODE((tmp_path / "a" / "file.json").stat().st_mode) == 0o666 & ~mask


# --- posters ----------------------------------------------------------------------------------
def posters_of(server, tmp_path, catalog: Path, **options):
    store = DataStore(tmp_path / "store")
    movies = list(load_snapshot(catalog).movies.values())
    with make_client(server, tmp_path) as client:
        return store, poster_files.download_posters(
            client, store, movies, image_base_url=f"{server.base_url}/t/p", **options
        )


def image_requests(server) -> int:
    return sum(n for path, n in server.state.paths.items() if path.startswith("/t/p/"))


def test_stored_posters_are_not_downloaded_again_when_their_statuses_were_lost(demo_dir, tmp_path):
    with serve_snapshot(demo_dir, token=TOKEN) as server:
        store, (first, _) = posters_of(server, tmp_path, demo_dir)
        asked = image_requests(server)
        # A run that died after storing the files and before writing poster_status.parquet.
        _, (second, summary) = posters_of(server, tmp_path, demo_dir, previous=None)
        assert image_requests(server) == asked
    assert summary["downloaded"] == 0 and summary["reused"] == (first["status"] == "ok").sum()
    pd.testing.assert_frame_equal(first, second)


def test_each_stored_poster_carries_its_content_hash_and_an_older_table_gets_it_without_a_download(demo_dir, tmp_path):
    """The hash the poster embeddings key their cache by is taken at ingestion; a status table written
    before it was kept has it added from the stored files, with no request."""
    with serve_snapshot(demo_dir, token=TOKEN) as server:
        store, (first, _) = posters_of(server, tmp_path, demo_dir)
        ok = first[first["status"] == "ok"]
        assert len(ok) and all(h == content_key((store.root / f).read_bytes()) for h, f in zip(ok["sha1"], ok["file"]))
        assert first.loc[first["status"] != "ok", "sha1"].isna().all()
        asked = image_requests(server)
        _, (upgraded, summary) = posters_of(server, tmp_path, demo_dir, previous=first.drop(columns="sha1"))
        assert image_requests(server) == asked and summary["reused"] == len(ok)
    pd.testing.assert_frame_equal(first, upgraded)


def test_a_converted_poster_records_the_stored_size_and_a_broken_stored_file_is_served(catalog_copy, tmp_path):
    movies = [m for m in load_snapshot(catalog_copy).movies.values() if m.get("poster_path")]
    png, broken = movies[0], movies[1]
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 450), (200, 30, 30, 255)).save(buffer, "PNG")
    (catalog_copy / "posters" / png["poster_path"].lstrip("/")).write_bytes(buffer.getvalue())
    (catalog_copy / "posters" / broken["poster_path"].lstrip("/")).write_bytes(b"\xff\xd8\xff" + b"\x00" * 5000)
    with serve_snapshot(catalog_copy, token=TOKEN) as server:
        store, (frame, _) = posters_of(server, tmp_path, catalog_copy, rules=poster_files.PosterRules(size="w342"))
        broken_path = f"/t/p/w342{broken['poster_path']}"
        assert server.state.paths[broken_path] == 1  # answered, not dropped and retried
    rows = frame.set_index("id")
    converted = rows.loc[png["id"]]
    assert converted["status"] == "ok"
    assert converted["bytes"] == (store.root / converted["file"]).stat().st_size != len(buffer.getvalue())
    assert rows.loc[broken["id"], "status"] == "corrupt"


# --- kill -9 and resume, through the dagster CLI ----------------------------------------------
class Ingestion:
    """`dagster asset materialize` against a replay of the demo catalog posing as the real API."""

    def __init__(self, server, tmp_path: Path):
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "GENRE_PIPELINE_"))} | {
            "DAGSTER_HOME": str(home),
            "GENRE_PIPELINE_DATA": str(tmp_path / "data"),
            "GENRE_PIPELINE_YEARS": "2015-2024",
            "TMDB_BASE_URL": server.api_url,
            "TMDB_API_READ_ACCESS_TOKEN": TOKEN,
        }
        self.store = DataStore(tmp_path / "data" / settings.choose_source(self.env).slug)
        # Slow enough to be killed mid-step: a few requests a second, two at a time.
        self.slow = self.tmdb_config(tmp_path / "slow.yaml", rate_limit_per_s=12, max_workers=2)

    @staticmethod
    def tmdb_config(path: Path, **values) -> Path:
        """Launch-time config of the tmdb resource (it replaces all of the resource's values set in code)."""
        source = {
            "source": "tmdb",
            "base_url": {"env": "TMDB_BASE_URL"},
            "api_read_access_token": {"env": "TMDB_API_READ_ACCESS_TOKEN"},
        }
        path.write_text(yaml.safe_dump({"resources": {"tmdb": {"config": source | values}}}))
        return path

    def command(self, *args: str) -> list:
        return [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*args), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result

    def kill_when(self, ready, *args: str) -> None:
        """Start a slowed run and SIGKILL it once ``ready()``; the run never finished."""
        process = subprocess.Popen(
            self.command(*args, "-c", str(self.slow)),
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def partial_files(store: DataStore) -> list[Path]:
    return [p for folder in store.ingestion_dirs if folder.is_dir() for p in folder.rglob(".*.tmp")]


def test_a_killed_run_blocks_nothing_and_its_rerun_asks_only_for_what_was_not_stored(demo_dir, tmp_path):
    movies = load_snapshot(demo_dir).movies
    with serve_snapshot(demo_dir, token=TOKEN) as server:
        ingestion = Ingestion(server, tmp_path)
        store = ingestion.store
        ingestion.run("--select", "tmdb_configuration,tmdb_genres")
        ingestion.run("--select", "raw_discover_pages", "--partition-range", "2015...2024")

        def cached_details() -> set[int]:
            keys = {i: ResponseCache.key(f"/movie/{i}", {}) for i in movies}
            return {i for i, key in keys.items() if (store.http_cache / key[:2] / f"{key}.json").is_file()}

        ingestion.kill_when(lambda: len(cached_details()) >= 30, "--select", "movie_details")
        stored = cached_details()
        assert 30 <= len(stored) < len(movies)
        ingestion.run("--select", "movie_details")  # a dead run's lock is gone: this does not wait
        assert not partial_files(store)
        details = store.details_file.read_text().splitlines()
        assert len(details) == len(movies) == len({json.loads(line)["id"] for line in details})
        assert {
            i: server.state.paths[f"/3/movie/{i}"] for i in stored if server.state.paths[f"/3/movie/{i}"] != 1
        } == {}
        assert all(server.state.paths[f"/3/movie/{i}"] <= 2 for i in movies)  # in flight at the kill: twice

        images = store.poster_images_dir
        ingestion.kill_when(lambda: images.is_dir() and len(list(images.glob("*.jpg"))) >= 20, "--select", "posters")
        stored_posters = {p.name for p in images.glob("*.jpg")}
        assert not store.poster_status_file.exists()  # died before writing the statuses
        ingestion.run("--select", "posters")
        assert not partial_files(store)
        status = poster_files.read_statuses(store)
        with_poster = {m["id"] for m in movies.values() if m.get("poster_path")}
        assert set(status.loc[status["status"] == "ok", "id"]) == with_poster
        assert len(status) == len(movies) == status["id"].nunique()
        requested = {path.rsplit("/", 1)[-1]: n for path, n in server.state.paths.items() if path.startswith("/t/p/")}
        assert all(requested[name] == 1 for name in stored_posters)


def test_a_bad_or_partial_launch_config_fails_at_once_naming_the_field(demo_dir, tmp_path):
    with serve_snapshot(demo_dir, token=TOKEN) as server:
        ingestion = Ingestion(server, tmp_path)
        bad = ingestion.tmdb_config(tmp_path / "bad.yaml", max_workers=0)
        started = time.monotonic()
        result = ingestion.run("--select", "tmdb_configuration", "-c", str(bad), check=False)
        assert result.returncode != 0 and "max_workers" in result.stderr
        assert "STEP_UP_FOR_RETRY" not in result.stderr and "STEP_RESTARTED" not in result.stderr
        assert time.monotonic() - started < 60  # no retry delays (30 s and more)
        # Only the rate in the launchpad: without the source this must fail, not serve the demo catalog.
        partial = tmp_path / "partial.yaml"
        partial.write_text(yaml.safe_dump({"resources": {"tmdb": {"config": {"rate_limit_per_s": 5}}}}))
        result = ingestion.run("--select", "tmdb_configuration", "-c", str(partial), check=False)
        assert result.returncode != 0 and "source" in result.stderr
        assert sum(server.state.paths.values()) == 0
        assert not ingestion.store.root.exists() or not ingestion.store.tmdb_configuration_file.exists()


# --- the TMDb lock ----------------------------------------------------------------------------
# A process that holds (or waits for) the lock. It starts with SIGTERM's default action and unblocked,
# as a run's process does: an ignored or blocked SIGTERM is inherited across exec from the pytest worker
# that spawns it, whatever libraries earlier tests ran there did to it (one CI run timed out on it).
HOLD_THE_LOCK = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
from genre_pipeline.tmdb import lock
with lock.exclusive(sys.argv[1], on_wait=lambda holder: print("waiting for", holder, flush=True)):
    print("holding", flush=True)
    time.sleep(600)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_holder(lock_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "python", "-c", HOLD_THE_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )


def test_the_lock_of_a_killed_holder_is_free_and_a_waiter_sleeps_and_stops_on_sigterm(tmp_path):
    lock_file = tmp_path / "tmdb.lock"
    holder = start_holder(lock_file)
    assert holder.stdout.readline().strip() == "holding"
    waiter = start_holder(lock_file)
    try:
        assert waiter.stdout.readline().startswith(f"waiting for pid {holder.pid} since")
        before = cpu_seconds(waiter.pid)
        time.sleep(3)
        assert waiter.poll() is None and cpu_seconds(waiter.pid) - before < 0.3  # asleep, not spinning
        waiter.send_signal(signal.SIGTERM)
        waiter.wait(timeout=10)
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait(timeout=10)
        started = time.monotonic()
        with lock.exclusive(lock_file):
            assert time.monotonic() - started < 1
            assert lock_file.read_text().startswith(f"pid {os.getpid()} ")
    finally:
        for process in (holder, waiter):
            process.kill()
            process.wait(timeout=10)
