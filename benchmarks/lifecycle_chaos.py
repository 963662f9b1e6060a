"""The model half under faults: a refresh killed at each step, a damaged file, a tracking store held
by another process, a full disk, with `genre-pipeline serve` answering a closed-loop client throughout.

    python benchmarks/lifecycle_chaos.py [--work data/benchmark-lifecycle] [--faults kill:stacked_model,...]

Builds the demo catalog's graph as it stood at the end of 2023 once (MiniLM, light training, two
shards per embedding asset) and keeps a copy. Then, per fault: restores the copy (same paths: MLflow
keeps absolute artifact locations), starts `genre-pipeline serve` on it (champion polled every second)
with two closed-loop clients on /predict, moves the catalog to the end of 2024 (enough new movies that
the models retrain and a new champion is promoted), runs `python -m genre_pipeline.refresh` with the
fault injected, and runs it again until it exits 0 (at most --attempts times). The first scenario has
no fault: it gives what every other must settle on (the champion's training key), how many trainings
a refresh takes, and each step's duration (a kill lands at a random moment inside the step, and is
checked to have found the step running, from Dagster's log of the refresh; a kill that found its step
ended is tried again earlier in the step, three times at most).

Faults: kill:<step> (SIGKILL of the refresh process during each embedding shard and merge, each model,
model_comparison, champion_model); damaged:text_embeddings (the cache truncated before the refresh);
damaged:report and damaged:logged_model (the refresh killed as model_comparison starts, then a report
file of text_model or a file of stacked_model's logged model truncated); locked:mlflow.db (an
exclusive sqlite lock held 30 s, longer than MLflow's 20 s, from when text_model starts); full_disk
(the data folder on a tmpfs sized to fill during the refresh, enlarged before the rerun; needs root).

After each: failed client requests, a champion alias pointing at a version that does not load (every
version it points at is loaded as it moves), a @challenger left or two versions of one training run,
a file that is not whole (a model folder against its manifest, an embeddings cache that does not read
whole or differs from the fault-free run's), whether it settled on the expected champion, and the
trainings beyond the fault-free run's (plus one for a damaged model). The last line is one JSON object.
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from genre_pipeline import settings, tracking
from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.models.encoders import MINILM_NAMES
from genre_pipeline.models.encoders.cache import DamagedEmbeddings, Embeddings
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.training import manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUILT_AS_OF, REFRESH_AS_OF = "2023-12-31", "2024-12-31"
CATALOG_MOVIES, CATALOG_SEED = 200, 8  # test_refresh's catalog: its genres stay the same through 2024
HEADS = {"max_epochs": 10, "patience": 3}
RUN_CONFIG = {
    "resources": {
        "training": {"config": {"text_encoders": [MINILM_NAMES[0]], "temporal_test_years": 0}},
        "monitoring": {"config": {"retraining": {"min_new_labelled": 5}}},
    },
    "ops": {
        **{name: {"config": HEADS} for name in ("text_model", "image_model", "fusion_model")},
        "stacked_model": {"config": {"folds": 2, "stacker_bags": 1, "heads": HEADS}},
    },
}
SHARDS = 2
KILL_STEPS = (
    *(f"{asset}_shard_{n}" for asset in ("text_embeddings", "poster_embeddings") for n in range(SHARDS)),
    "text_embeddings_merge",
    "poster_embeddings_merge",
    *manifest.MODELS,
    "model_comparison",
    "champion_model",
)
FAULTS = (
    *(f"kill:{step}" for step in KILL_STEPS),
    "damaged:text_embeddings",
    "damaged:report",
    "damaged:logged_model",
    "locked:mlflow.db",
    "full_disk",
)
LOCK_HELD_S = 30.0  # longer than the busy timeout MLflow gives its sqlite sessions (20 s)
OVERVIEW = {"overview": "A detective hunts a killer through a rain-soaked city.", "tagline": "Trust no one."}


class Scene:
    """One restored copy of the built graph, its environment and its stores."""

    def __init__(self, work: Path, catalog: Path):
        self.live = work / "live"
        self.home = self.live / "dagster_home"
        self.data = self.live / "data"
        self.env = {k: v for k, v in os.environ.items() if k not in ("TMDB_API_READ_ACCESS_TOKEN", "TMDB_API_KEY")}
        self.env |= {
            "DAGSTER_HOME": str(self.home),
            settings.DATA_DIR_ENV: str(self.data),
            settings.SNAPSHOT_ENV: str(catalog),
            settings.CATALOG_DATE_ENV: BUILT_AS_OF,
            settings.EMBEDDING_SHARDS_ENV: str(SHARDS),
        }
        self.env.pop(settings.YEARS_ENV, None)
        self.store = DataStore(self.data / settings.choose_source(self.env).slug)
        self.uri = tracking.sqlite_uri(self.store.mlflow_db)
        self.log = self.live / "refresh.log"


def run(args: list, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def build(work: Path) -> Scene:
    catalog = demo_catalog.generate(work / "catalog", n_movies=CATALOG_MOVIES, seed=CATALOG_SEED)
    scene = Scene(work, catalog)
    scene.home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", scene.home / "dagster.yaml")
    years = run([BIN / "genre-pipeline", "years"], scene.env).stdout.strip()
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", "--select", "*"]
    run([*materialize, "--partition-range", years, "--config-json", json.dumps(RUN_CONFIG)], scene.env)
    shutil.copytree(scene.live, work / "built", symlinks=True)
    return scene


def restore(work: Path, scene: Scene) -> None:
    shutil.rmtree(scene.live)
    shutil.copytree(work / "built", scene.live, symlinks=True)


def child(*args: str) -> list[str]:
    """This script in another process: MLflow keeps one engine per store URI for a process's life, and
    each scenario replaces the store's file under the same path."""
    return [str(BIN / "python"), str(Path(__file__).resolve()), *args]


class Load:
    """`genre-pipeline serve` on the scene's champion, two closed-loop clients, and a watcher (another
    process) that loads every version the champion alias points at as it moves."""

    def __init__(self, scene: Scene, port: int):
        self.scene, self.url = scene, f"http://127.0.0.1:{port}"
        self.requests = self.failed = 0
        self.stop = threading.Event()
        command = [BIN / "genre-pipeline", "serve", "--port", str(port), "--poll-interval", "1"]
        command += ["--tracking-uri", scene.uri, "--log-level", "warning"]
        self.server_log = open(scene.live / "serve.log", "w")
        self.server = subprocess.Popen(
            [str(c) for c in command], env=scene.env, stdout=self.server_log, stderr=self.server_log
        )
        deadline = time.monotonic() + 120
        while not self._ready():
            if time.monotonic() > deadline or self.server.poll() is not None:
                sys.exit(f"serve did not get ready: {(scene.live / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        self.watched = scene.live / "watched.json"
        self.watcher = subprocess.Popen(child("--watch", scene.uri, str(self.watched)), env=scene.env)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def _client(self) -> None:
        body = json.dumps(OVERVIEW).encode()
        while not self.stop.is_set():
            request = urllib.request.Request(f"{self.url}/predict", body, {"Content-Type": "application/json"})
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    answer.read()
                    self.failed += answer.status != 200
            except OSError:  # HTTPError (a status other than 2xx) included
                self.failed += 1

    def close(self) -> dict:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.watcher.send_signal(signal.SIGTERM)
        self.watcher.wait(timeout=120)
        self.server.terminate()
        self.server.wait(timeout=30)
        self.server_log.close()
        return json.loads(self.watched.read_text())


def watch(uri: str, out: Path) -> None:
    """Until SIGTERM: load each version the champion alias points at (after a last look, on SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = MlflowClient(uri, uri)
    versions, unloadable = [], []
    while True:
        last = stop.is_set()
        champion = registry.current_champion(client)
        version = str(champion["version"]) if champion else None
        if version and version not in versions:
            versions.append(version)
            try:
                GenrePredictor.from_registry(uri, version)
            except Exception as error:  # any failure to load is what this counts
                unloadable.append(f"v{version}: {type(error).__name__}: {error}"[:300])
        if last:
            break
        stop.wait(0.5)
    out.write_text(json.dumps({"versions": versions, "unloadable": unloadable}))


def inspect(uri: str, since: float) -> dict:
    """The champion (model, training key), the trainings finished since ``since`` by model, and what is
    inconsistent in the registry: a @challenger left, or two versions of one training run."""
    client = MlflowClient(uri, uri)
    champion = registry.current_champion(client)
    key = None
    if champion is not None:
        key = [champion["tags"].get("model"), client.get_run(champion["run_id"]).data.params.get("training_key")]
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"attributes.start_time >= {int(since * 1000)}", max_results=1000)
    trainings = collections.Counter(
        r.info.run_name for r in runs if r.info.status == "FINISHED" and r.info.run_name in manifest.MODELS
    )
    found = []
    challenger = registry.current_champion(client, registry.CHALLENGER_ALIAS)
    if challenger is not None:
        found.append(f"@challenger left on v{challenger['version']}")
    by_run = collections.Counter(v.run_id for v in client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'"))
    found += [f"{n} versions of run {run_id}" for run_id, n in by_run.items() if n > 1]
    return {"champion": key, "trainings": dict(trainings), "inconsistencies": found}


STEP_START = re.compile(r" - ([\w.]+) - STEP_START - ")
STEP_END = re.compile(r" - ([\w.]+) - STEP_(?:SUCCESS|FAILURE) - ")
# Dagster's durations: 533ms, 2.1s, 4m52s, 1h4m.
STEP_TIME = re.compile(r'STEP_SUCCESS - Finished execution of step "([\w.]+)" in ([\dhms.]+)\.')
DURATION = re.compile(r"([\d.]+)(ms|h|m|s)")


def op_of(step_key: str) -> str:
    return step_key.split(".")[-1]


def seconds(duration: str) -> float:
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(value) * scale[unit] for value, unit in DURATION.findall(duration))


def step_durations(log_text: str) -> dict[str, float]:
    """Each step's duration in seconds, from the refresh's log (Dagster's own STEP_SUCCESS lines)."""
    return {op_of(m[1]): seconds(m[2]) for m in STEP_TIME.finditer(log_text)}


class RefreshLog:
    """The refresh's log as it grows: Dagster writes each step's start and end to it at once."""

    def __init__(self, path: Path):
        self.path, self.offset = path, path.stat().st_size if path.exists() else 0

    def new_text(self) -> str:
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            handle.seek(self.offset)
            return handle.read()

    def started(self, op: str, text: str) -> bool:
        return any(op_of(m[1]) == op for m in STEP_START.finditer(text))

    def ended(self, op: str, text: str) -> bool:
        return any(op_of(m[1]) == op for m in STEP_END.finditer(text))


def refresh(scene: Scene) -> subprocess.Popen:
    command = [BIN / "python", "-m", "genre_pipeline.refresh", "--config-json", json.dumps(RUN_CONFIG)]
    log = open(scene.log, "a")
    return subprocess.Popen(
        [str(c) for c in command], cwd=REPO, env=scene.env, stdout=log, stderr=log, start_new_session=True
    )


def wait_for_step(log: RefreshLog, process: subprocess.Popen, op: str) -> bool:
    """Whether step ``op`` started (False: the refresh ended without starting it)."""
    while process.poll() is None:
        if log.started(op, log.new_text()):
            return True
        time.sleep(0.01)
    return log.started(op, log.new_text())


def kill_during(log: RefreshLog, process: subprocess.Popen, op: str, duration: float, fraction: float):
    """SIGKILL the refresh ``fraction`` of ``duration`` into step ``op``; whether the step was still running."""
    if not wait_for_step(log, process, op):
        return False, f"{op} never started"
    time.sleep(fraction * duration)
    running = process.poll() is None and not log.ended(op, log.new_text())
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return running, f"killed {fraction * duration:.2f} s into {op} (fault-free: {duration:.2f} s)"


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path.name} cut from {len(data)} to {len(data) // 2} bytes"


def hold_lock(db: Path, seconds: float, held: dict) -> None:
    connection = sqlite3.connect(db, timeout=60, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    held["from"] = time.time()
    time.sleep(seconds)
    connection.execute("COMMIT")
    held["until"] = time.time()
    connection.close()


def not_whole(scene: Scene, reference: dict[str, Embeddings]) -> list[str]:
    """Files the settled scene would read that are not whole, or embeddings that differ from the
    fault-free run's."""
    found = [f"{name}: {why}" for name, why in manifest.damaged(scene.store).items()]
    for name, expected in reference.items():
        try:
            got = Embeddings.load(scene.store.embeddings_dir / name)
        except (DamagedEmbeddings, FileNotFoundError) as error:
            found.append(str(error))
            continue
        rows = got.by_id()
        same = len(rows) == len(expected.ids) and all(
            int(i) in rows and got.keys[rows[int(i)]] == k and np.allclose(got.vectors[rows[int(i)]], v, atol=1e-4)
            for i, k, v in zip(expected.ids, expected.keys, expected.vectors)
        )
        if not same:
            found.append(f"{name} differs from the fault-free run's")
    return found


def mount_small(scene: Scene, spare_mb: float) -> str:
    """Move the data folder onto a tmpfs with ``spare_mb`` free."""
    used = sum(p.stat().st_size for p in scene.data.rglob("*") if p.is_file()) / 2**20
    aside = scene.data.with_name("data.before-tmpfs")
    scene.data.rename(aside)
    scene.data.mkdir()
    size = int(used * 1.3 + spare_mb) + 1  # tmpfs counts pages: some room for the copy's own rounding
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(scene.data)], check=True)
    shutil.copytree(aside, scene.data, dirs_exist_ok=True, symlinks=True)
    shutil.rmtree(aside)
    free = shutil.disk_usage(scene.data).free / 2**20
    return f"data folder on a {size} MiB tmpfs, {free:.0f} MiB free"


def unmount(scene: Scene) -> None:
    copy = scene.data.with_name("data.from-tmpfs")
    shutil.copytree(scene.data, copy, symlinks=True)
    subprocess.run(["umount", str(scene.data)], check=True)
    scene.data.rmdir()
    copy.rename(scene.data)


def inject_and_refresh(scene: Scene, fault: str, control: dict | None, moment: float, result: dict) -> int:
    """Run the first refresh with ``fault`` injected (a kill ``moment`` of the step's fault-free duration
    into it); its exit code. ``result`` gets hit and detail."""
    kind, _, step = fault.partition(":")
    log = RefreshLog(scene.log)
    process = refresh(scene)
    if kind == "kill":
        duration = control["steps"].get(step, 1.0)
        result["hit"], result["detail"] = kill_during(log, process, step, duration, moment)
    elif kind == "damaged" and step in ("report", "logged_model"):
        result["hit"], _ = kill_during(log, process, "model_comparison", 0.0, 0.0)
        if step == "report":
            result["detail"] = truncate(scene.store.model_dir("text_model") / "per_genre.csv")
        else:
            recorded = json.loads((scene.store.model_dir("stacked_model") / manifest.MANIFEST_FILE).read_text())
            logged = sorted(Path(recorded["logged_model"]["folder"]).rglob("*.npz"), key=lambda p: p.stat().st_size)
            result["detail"] = truncate(logged[-1])
    elif kind == "locked":
        if wait_for_step(log, process, "text_model"):
            held: dict = {}
            hold_lock(scene.store.mlflow_db, LOCK_HELD_S, held)
            result["detail"] = f"exclusive lock held {LOCK_HELD_S:.0f} s from text_model's start"
            # Hit: the training step was still running when the lock went (it had to wait for it).
            result["hit"] = process.poll() is None and not log.ended("text_model", log.new_text())
    process.wait()
    text = log.new_text()
    if fault == "damaged:text_embeddings":
        result["hit"] = any(scene.store.embeddings_dir.glob("text-*.damaged-*"))
    if kind == "full_disk":
        result["hit"] = process.returncode != 0 and "no space left on the device of" in text
        result["error"] = next((line.strip()[:300] for line in text.splitlines() if "no space left on the" in line), "")
    return process.returncode


def scenario(
    work: Path, scene: Scene, fault: str, control: dict | None, port: int, attempts: int, moment: float
) -> dict:
    """Restore the built graph, serve it under load, refresh it with ``fault``, refresh until it settles."""
    restore(work, scene)
    scene.env[settings.CATALOG_DATE_ENV] = REFRESH_AS_OF
    started = time.time()
    kind, _, step = fault.partition(":")
    result = {"kind": kind, "step": step or fault, "hit": kind == "none", "detail": ""}
    needed = collections.Counter(
        {"text_model": fault == "damaged:report", "stacked_model": fault == "damaged:logged_model"}
    )
    if fault == "damaged:text_embeddings":
        result["detail"] = truncate(next(scene.store.embeddings_dir.glob("text-*.npz")))
    mounted = fault == "full_disk"
    if mounted:  # before the server opens the tracking store
        result["detail"] = mount_small(scene, control["data_growth_mb"] / 2)
    load = Load(scene, port)
    try:
        exit_code = inject_and_refresh(scene, fault, control, moment, result)
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=4g", str(scene.data)], check=True)
        refreshes = 1
        while exit_code != 0 and refreshes <= attempts:
            process = refresh(scene)
            exit_code, refreshes = process.wait(), refreshes + 1
        time.sleep(3)  # the server polls the alias every second: it loads the settled champion meanwhile
    finally:
        watched = load.close()
        found = json.loads(
            subprocess.run(
                child("--inspect", scene.uri, str(started)), env=scene.env, capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
        if mounted:
            unmount(scene)
    result |= {"refreshes": refreshes, "settled": exit_code == 0, "champion": found["champion"]}
    result |= {"trainings": found["trainings"], "aliases_inconsistent": found["inconsistencies"]}
    result |= {"requests": load.requests, "failed_requests": load.failed}
    result |= {"champion_versions": watched["versions"], "champion_unloadable": watched["unloadable"]}
    result["wall_s"] = round(time.time() - started, 1)
    if control is None:  # the fault-free run: what the others are measured against
        result["steps"] = step_durations(scene.log.read_text())
        result["embeddings"] = {p.name: Embeddings.load(p) for p in scene.store.embeddings_dir.glob("*.npz")}
        size = lambda folder: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # noqa: E731
        result["data_growth_mb"] = (size(scene.data) - size(work / "built" / "data")) / 2**20
    else:
        trainings = collections.Counter(found["trainings"])
        expected = collections.Counter(control["trainings"])
        result["extra_trainings"] = sum(max(0, trainings[m] - expected[m] - needed[m]) for m in manifest.MODELS)
        result["recovered"] = result["settled"] and result["champion"] == control["champion"]
        result["not_whole"] = not_whole(scene, control["embeddings"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "benchmark-lifecycle")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS))
    parser.add_argument("--attempts", type=int, default=4, help="refreshes after the faulted one, at most")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--watch", nargs=2, metavar=("TRACKING_URI", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--inspect", nargs=2, metavar=("TRACKING_URI", "SINCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        return watch(args.watch[0], Path(args.watch[1]))
    if args.inspect:
        return print(json.dumps(inspect(args.inspect[0], float(args.inspect[1]))))
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        sys.exit(f"unknown faults {sorted(unknown)}: choose from {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    work = args.work.resolve()
    if work.exists():
        work.rename(work.with_name(f"{work.name}.before-{time.strftime('%Y%m%d-%H%M%S')}"))
    started = time.monotonic()
    scene = build(work)
    build_s = round(time.monotonic() - started, 1)
    print(f"built as of {BUILT_AS_OF}: {build_s} s", flush=True)
    control = scenario(work, scene, "none", None, args.port, args.attempts, 0.0)
    shown = {k: v for k, v in control.items() if k not in ("embeddings", "steps")}
    print("fault-free:", json.dumps(shown, default=str), flush=True)
    results = []
    for fault in faults:
        # A kill that found its step ended already (it ran faster than fault-free) is tried again,
        # earlier in the step.
        for tries in range(1, 4):
            moment = rng.uniform(0.1, 0.9) / 2 ** (tries - 1)
            outcome = scenario(work, scene, fault, control, args.port, args.attempts, moment)
            if outcome["hit"] or not fault.startswith("kill:"):
                break
        outcome["tries"] = tries
        results.append(outcome)
        print(json.dumps(outcome, default=str), flush=True)
    everything = [control, *results]
    summary = {
        "benchmark": "lifecycle_chaos",
        "catalog": {
            "movies": CATALOG_MOVIES,
            "seed": CATALOG_SEED,
            "built_as_of": BUILT_AS_OF,
            "refreshed_to": REFRESH_AS_OF,
        },
        "build_s": build_s,
        "fault_free": {k: control[k] for k in ("wall_s", "trainings", "champion", "champion_versions", "requests")},
        "faults": [
            {
                k: r[k]
                for k in (
                    "kind",
                    "step",
                    "hit",
                    "tries",
                    "detail",
                    "refreshes",
                    "recovered",
                    "extra_trainings",
                    "wall_s",
                )
            }
            | ({"error": r["error"]} if r.get("error") else {})
            for r in results
        ],
        "requests": sum(r["requests"] for r in everything),
        "failed_requests": sum(r["failed_requests"] for r in everything),
        "champion_unloadable": sum(len(r["champion_unloadable"]) for r in everything),
        "aliases_inconsistent": sum(len(r["aliases_inconsistent"]) for r in everything),
        "truncated_read": sum(bool(r["not_whole"]) for r in results),
        "recovered": all(r["recovered"] for r in results),
        "extra_trainings": sum(r["extra_trainings"] for r in results),
        "problems": {
            r["kind"] + ":" + r["step"]: {
                k: r[k] for k in ("champion_unloadable", "aliases_inconsistent", "not_whole") if r[k]
            }
            for r in results
            if r["champion_unloadable"] or r["aliases_inconsistent"] or r["not_whole"]
        },
    }
    summary["met"] = {
        "every_fault_hit": all(r["hit"] for r in results),
        "no_failed_requests": summary["failed_requests"] == 0,
        "champion_always_loadable": summary["champion_unloadable"] == 0,
        "aliases_consistent": summary["aliases_inconsistent"] == 0,
        "no_truncated_read": summary["truncated_read"] == 0,
        "recovered": summary["recovered"],
        "no_extra_trainings": summary["extra_trainings"] == 0,
    }
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
