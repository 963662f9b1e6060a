"""Ingest a whole snapshot through a hostile replay server, kill the run once, resume, and compare.

    python benchmarks/chaos.py --snapshot ../shared/data/tmdb-snapshot

Two ingestions through `dagster asset materialize` (what `make run` and CI use), each into a fresh
data folder and Dagster instance, against a replay server posing as the real API
(TMDB_BASE_URL): first fault-free, then with 10% 429 (Retry-After --retry-after), 5% 5xx, 2% slow
answers and 4% broken images (half garbled, half truncated), and one SIGKILL of the run in the
middle of movie_details, then resumed. Prints movies, posters ok, lost (in the fault-free result,
missing after the chaos), duplicated, wrongly marked (a poster's status other than what the
fault-free run and the injected breakage say), requests against the fault-free run plus the
injected failures, requests after the kill for anything stored before it, and the wall-time ratio.
The last line is one JSON object.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from genre_pipeline import settings
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb.faults import Faults
from genre_pipeline.tmdb.replay import serve_snapshot
from genre_pipeline.tmdb.snapshot import load_snapshot
from genre_pipeline.tmdb.transport import ResponseCache

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "chaos-benchmark-token"
TARGETS = {"lost": 0, "duplicated": 0, "wrongly_marked": 0, "request_ratio": 1.05, "repeated_after_kill": 0}


class Run:
    """One ingestion into its own data folder and Dagster instance, through the dagster CLI."""

    def __init__(self, server, root: Path, rate: float, workers: int, years: str):
        home = root / "dagster_home"
        home.mkdir(parents=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "GENRE_PIPELINE_"))} | {
            "DAGSTER_HOME": str(home),
            "GENRE_PIPELINE_DATA": str(root / "data"),
            "TMDB_BASE_URL": server.api_url,
            "TMDB_API_READ_ACCESS_TOKEN": TOKEN,
            "GENRE_PIPELINE_YEARS": years.replace("...", "-"),  # the code location's partitions
        }
        self.store = DataStore(root / "data" / settings.choose_source(self.env).slug)
        self.years = years
        self.config = root / "tmdb.yaml"
        tmdb = {
            "source": "tmdb",
            "base_url": {"env": "TMDB_BASE_URL"},
            "api_read_access_token": {"env": "TMDB_API_READ_ACCESS_TOKEN"},
            "rate_limit_per_s": rate,
            "max_workers": workers,
            "backoff_base_s": 0.2,
        }
        self.config.write_text(yaml.safe_dump({"resources": {"tmdb": {"config": tmdb}}}))

    def steps(self) -> list[list[str]]:
        return [
            ["--select", "tmdb_configuration,tmdb_genres"],
            ["--select", "raw_discover_pages", "--partition-range", self.years],
            ["--select", "movie_details"],
            ["--select", "posters"],
        ]

    def command(self, step: list[str]) -> list:
        return [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", *step, "-c", self.config]

    def run(self, step: list[str]) -> None:
        result = subprocess.run(self.command(step), cwd=REPO, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{step} failed:\n{result.stderr[-4000:]}")

    def kill_when(self, step: list[str], ready) -> None:
        process = subprocess.Popen(
            self.command(step),
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not ready():
            if process.poll() is not None:
                raise SystemExit(f"{step} ended before the kill")
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def cached_detail_ids(store: DataStore, ids) -> set[int]:
    keys = {i: ResponseCache.key(f"/movie/{i}", {}) for i in ids}
    return {i for i, key in keys.items() if (store.http_cache / key[:2] / f"{key}.json").is_file()}


def outcome(store: DataStore) -> dict:
    details = [json.loads(line) for line in store.details_file.read_text().splitlines() if line]
    status = poster_files.read_statuses(store)
    return {
        "detail_ids": [m["id"] for m in details],
        "status": dict(zip(status["id"].astype(int), status["status"])),
        "status_ids": status["id"].astype(int).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--rate", type=float, default=150.0, help="client rate limit, requests per second")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--retry-after", type=float, default=0.1, help="Retry-After of the injected 429s")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of details stored when the run is killed")
    args = parser.parse_args()
    snapshot = load_snapshot(args.snapshot)
    first, last = snapshot.years()[0], snapshot.years()[-1]
    years = f"{first}...{last}"
    faults = Faults(
        rate_limit_fraction=0.10,
        retry_after_s=args.retry_after,
        server_error_fraction=0.05,
        slow_fraction=0.02,
        slow_s=2.0,
        corrupt_image_fraction=0.02,
        truncated_image_fraction=0.02,
        seed=11,
    )
    figures = {}
    with tempfile.TemporaryDirectory(prefix="chaos-") as scratch:
        with serve_snapshot(args.snapshot, token=TOKEN) as server:
            clean = Run(server, Path(scratch) / "clean", args.rate, args.workers, years)
            started = time.monotonic()
            for step in clean.steps():
                clean.run(step)
            clean_wall = time.monotonic() - started
            clean_requests = sum(server.state.paths.values())
            expected = outcome(clean.store)
        print(f"fault-free: {clean_requests} requests in {clean_wall:.1f} s", flush=True)

        with serve_snapshot(args.snapshot, token=TOKEN, faults=faults) as server:
            chaos = Run(server, Path(scratch) / "chaos", args.rate, args.workers, years)
            ids = expected["detail_ids"]
            started = time.monotonic()
            configuration, discover, details, posters = chaos.steps()
            chaos.run(configuration)
            chaos.run(discover)
            chaos.kill_when(details, lambda: len(cached_detail_ids(chaos.store, ids)) >= args.kill_at * len(ids))
            stored_before_kill = cached_detail_ids(chaos.store, ids)
            asked_before_kill = Counter(server.state.paths)
            print(f"killed movie_details with {len(stored_before_kill)} of {len(ids)} details stored", flush=True)
            chaos.run(details)
            chaos.run(posters)
            chaos_wall = time.monotonic() - started
            chaos_requests = sum(server.state.paths.values())
            injected = dict(server.state.faults_injected)
            asked = server.state.paths
        got = outcome(chaos.store)

    broken = {
        m["id"]
        for m in snapshot.movies.values()
        if m.get("poster_path") and faults.broken_image(m["poster_path"].lstrip("/"))
    }
    should_be = {i: ("corrupt" if i in broken and s == "ok" else s) for i, s in expected["status"].items()}
    lost_details = set(expected["detail_ids"]) - set(got["detail_ids"])
    lost_posters = {i for i, s in should_be.items() if s == "ok" and got["status"].get(i) != "ok"}
    wrongly_marked = {i for i, s in got["status"].items() if should_be.get(i) != s}
    # Failures the server injected that cost a request each (a slow answer or a broken image costs none).
    extra = injected.get("rate_limit", 0) + injected.get("server_error", 0)
    repeated = {
        i: asked[f"/3/movie/{i}"] - asked_before_kill[f"/3/movie/{i}"]
        for i in stored_before_kill
        if asked[f"/3/movie/{i}"] != asked_before_kill[f"/3/movie/{i}"]
    }
    figures = {
        "movies": len(got["detail_ids"]),
        "posters_ok": sum(s == "ok" for s in got["status"].values()),
        "posters_broken_by_the_server": len(broken & {i for i, s in expected["status"].items() if s == "ok"}),
        "lost": len(lost_details) + len(lost_posters),
        "duplicated": (len(got["detail_ids"]) - len(set(got["detail_ids"])))
        + (len(got["status_ids"]) - len(set(got["status_ids"]))),
        "wrongly_marked": len(wrongly_marked),
        "requests_fault_free": clean_requests,
        "requests_chaos": chaos_requests,
        "injected": injected,
        "request_ratio": round(chaos_requests / (clean_requests + extra), 4),
        "stored_before_kill": len(stored_before_kill),
        "repeated_after_kill": len(repeated),
        "wall_fault_free_s": round(clean_wall, 1),
        "wall_chaos_s": round(chaos_wall, 1),
        "wall_ratio": round(chaos_wall / clean_wall, 2),
        "rate_per_s": args.rate,
        "retry_after_s": args.retry_after,
    }
    met = {
        "lost": figures["lost"] == 0,
        "duplicated": figures["duplicated"] == 0,
        "wrongly_marked": figures["wrongly_marked"] == 0,
        "request_ratio": figures["request_ratio"] <= TARGETS["request_ratio"],
        "repeated_after_kill": figures["repeated_after_kill"] == 0,
    }
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    print(f"targets met: {met}")
    print(json.dumps({"benchmark": "chaos", **figures, "targets": TARGETS, "met": met}))


if __name__ == "__main__":
    main()
