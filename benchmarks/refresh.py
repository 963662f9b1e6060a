"""Refresh cycles on a snapshot moved in time, through the same code path a scheduled refresh takes.

    python benchmarks/refresh.py --snapshot ../shared/data/tmdb-snapshot [--cycles 5] [--min-movies 8000]

Builds the whole graph (`dagster asset materialize --select '*'`, as `make run` does) on the catalog as
of the end of the first year that leaves at least --min-movies movies, then advances the catalog one
year per cycle and runs `python -m genre_pipeline.refresh` (the refresh schedule's run, then every run
declarative automation requests), then one refresh that brings nothing. Per cycle: new movies, TMDb
requests against what the new movies need, the serving champion's prequential macro-F1 and drift,
whether the models retrained and the champion moved, the champion's macro-F1 on one fixed set of the
newest movies (the snapshot's two newest release years, never ingested), wall time. The last line is one JSON
object.

--seed-embeddings DATA_FOLDER copies the cached embeddings of the movies released by the first date
from an earlier full-size run (the initial build then skips encoding them; every cycle still encodes
its own new movies).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
from mlflow import MlflowClient

from genre_pipeline import settings, tracking
from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.scoring import evaluate_snapshot
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb.snapshot import load_snapshot

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
INGESTION = ("raw_discover_pages", "movie_details", "posters")
MODELS = ("baseline_model", "text_model", "image_model", "fusion_model", "stacked_model")
TARGETS = {"requests_over_need": 1.1, "served_regressions": 0, "empty_refresh_s": 60}


def run(args: list, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def newest_movies_folder(snapshot_dir: Path, after: str, folder: Path) -> int:
    """A snapshot folder (for `genre-pipeline evaluate`) of the movies released after ``after``."""
    snapshot = load_snapshot(snapshot_dir)
    folder.mkdir(parents=True)
    movies = [m for m in snapshot.movies.values() if (m.get("release_date") or "") > after]
    (folder / "movies.jsonl").write_text("".join(json.dumps(m) + "\n" for m in movies))
    for name in ("genres.json", "configuration.json"):
        shutil.copy(snapshot_dir / name, folder / name)
    (folder / "posters").symlink_to(snapshot.posters_dir.resolve())
    return len(movies)


def seed_embeddings(source: DataStore, target: DataStore, ids: set[int]) -> list[str]:
    """Copy the cached embeddings of ``ids`` from another data folder of the same encoders."""
    copied = []
    for path in sorted(source.embeddings_dir.glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            keep = np.isin(data["ids"], list(ids))
            target.embeddings_dir.mkdir(parents=True, exist_ok=True)
            np.savez(target.embeddings_dir / path.name, **{k: data[k][keep] for k in ("ids", "keys", "vectors")})
        copied.append(f"{path.name}: {int(keep.sum())} rows")
    return copied


def latest(instance: dg.DagsterInstance, asset: str, since: float) -> dict | None:
    """The metadata of ``asset``'s latest materialization after ``since`` (a Unix time), or None."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.timestamp < since:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def cycle_figures(instance, store: DataStore, since: float, newest: Path, refresh: dict) -> dict:
    meta = {name: latest(instance, name, since) for name in (*INGESTION, "champion_on_new_movies", *MODELS)}
    meta |= {name: latest(instance, name, since) for name in ("retraining_decision", "champion_model")}
    requests = sum(m["requests"] for name in INGESTION if (m := meta[name]))
    discover, details, posters = (meta[name] or {} for name in INGESTION)
    need = discover.get("pages", 0) + details.get("fetched", 0) + posters.get("status_downloaded", 0)
    preq = meta["champion_on_new_movies"] or {}
    champion_model = meta["champion_model"] or {}
    uri = tracking.sqlite_uri(store.mlflow_db)
    champion = GenrePredictor.from_registry(uri)
    on_newest = evaluate_snapshot(champion, newest)
    drift = store.read_json(store.prequential_file, {}).get("drift", [])
    return {
        "new_movies": details.get("fetched", 0),
        "requests": requests,
        "requests_needed": need,
        "prequential_movies": preq.get("new_movies"),
        "prequential_macro_f1": preq.get("prequential_macro_f1"),
        "prequential_macro_f1_interval": [preq.get("prequential_macro_f1_low"), preq.get("prequential_macro_f1_high")],
        "prequential_champion": preq.get("champion"),
        "drift": {f["name"]: {"value": round(f["value"], 4), "passed": f["passed"]} for f in drift},
        "retrain_decision": (meta["retraining_decision"] or {}).get("decision"),
        "retrained": any(meta[name] for name in MODELS),
        "promoted": bool(champion_model.get("promoted")),
        "decision": champion_model.get("decision"),
        "champion": f"v{champion.info['version']} ({champion.info['model']})",
        "champion_newest_macro_f1": round(on_newest["macro_f1"], 4),
        "newest_movies_scored": on_newest["n_movies"],
        "runs": [{"assets": r["assets"], "success": r["success"], "wall_s": r["wall_s"]} for r in refresh["runs"]],
        "wall_s": refresh["wall_s"],
    }


def served_regression(client, promoted_version: str) -> bool:
    """Whether a promotion put a model in service that scored lower than the champion it replaced on
    the same data (the comparison kept as the version's tags)."""
    tags = client.get_model_version(registry.REGISTERED_MODEL, promoted_version).tags
    candidate, champion = tags.get("promotion.candidate_f1"), tags.get("promotion.champion_f1")
    return bool(candidate and champion) and float(candidate) < float(champion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--min-movies", type=int, default=8000)
    parser.add_argument("--work", type=Path, default=REPO / "data" / "benchmark-refresh")
    parser.add_argument("--seed-embeddings", type=Path, default=None, help="a data folder of an earlier run")
    parser.add_argument("--config-json", default="{}", help="run config of the initial build")
    parser.add_argument(
        "--cycle-config-json",
        default="{}",
        help="run config of every refresh cycle's runs (e.g. temporal_test_years 0: the temporal evaluation "
        "trains every model twice, and the initial build's report has it)",
    )
    args = parser.parse_args()
    snapshot_dir = args.snapshot.resolve()
    snapshot = load_snapshot(snapshot_dir)
    dates = sorted(m["release_date"] for m in snapshot.movies.values() if m.get("release_date"))
    years = sorted({int(d[:4]) for d in dates})
    start = next(y for y in years if sum(d <= f"{y}-12-31" for d in dates) >= args.min_movies)
    cycle_years = [y for y in years if y > start][: args.cycles]
    if len(cycle_years) < args.cycles:
        sys.exit(f"only {len(cycle_years)} release years after {start} in {snapshot_dir}")

    if args.work.exists():
        args.work.rename(args.work.with_name(f"{args.work.name}.before-{time.strftime('%Y%m%d-%H%M%S')}"))
    home, data = args.work / "dagster_home", args.work / "data"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    # The two newest release years, after every cycle: what the served model is for, never trained on.
    newest_after = f"{max(years[-3], cycle_years[-1])}-12-31"
    newest_n = newest_movies_folder(snapshot_dir, newest_after, args.work / "newest")
    env = {k: v for k, v in os.environ.items() if k not in ("TMDB_API_READ_ACCESS_TOKEN", "TMDB_API_KEY")}
    env |= {
        "DAGSTER_HOME": str(home),
        settings.DATA_DIR_ENV: str(data),
        settings.SNAPSHOT_ENV: str(snapshot_dir),
        settings.CATALOG_DATE_ENV: f"{start}-12-31",
    }
    env.pop(settings.YEARS_ENV, None)
    store = DataStore(data / settings.choose_source(env).slug)
    as_of = f"{start}-12-31"
    print(f"catalog as of {as_of}: {sum(d <= as_of for d in dates)} movies; cycles {cycle_years}", flush=True)
    print(f"fixed set of the newest movies: {newest_n} released after {newest_after}", flush=True)
    if args.seed_embeddings:
        released = {m["id"] for m in snapshot.movies.values() if (m.get("release_date") or "9") <= as_of}
        print("seeded:", seed_embeddings(DataStore(args.seed_embeddings), store, released), flush=True)

    partition_range = run([BIN / "genre-pipeline", "years"], env).stdout.strip()
    started = time.monotonic()
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", "--select", "*"]
    run([*materialize, "--partition-range", partition_range, "--config-json", args.config_json], env)
    build_s = round(time.monotonic() - started, 1)
    print(f"initial build ({partition_range}): {build_s} s", flush=True)
    # The random test split against the temporal one, before any cycle retrains.
    initial_reports = {name: json.loads(store.model_report_file(name).read_text()) for name in MODELS}

    os.environ["DAGSTER_HOME"] = str(home)  # the instance's yaml reads its folder from DAGSTER_HOME
    instance = dg.DagsterInstance.from_config(str(home))
    client = MlflowClient(tracking.sqlite_uri(store.mlflow_db), tracking.sqlite_uri(store.mlflow_db))
    cycles = []
    refresh = [BIN / "python", "-m", "genre_pipeline.refresh", "--config-json", args.cycle_config_json]
    for year in cycle_years:
        env[settings.CATALOG_DATE_ENV] = f"{year}-12-31"
        since = time.time()
        result = json.loads(run(refresh, env).stdout.strip().splitlines()[-1])
        figures = {"as_of": f"{year}-12-31", **cycle_figures(instance, store, since, args.work / "newest", result)}
        cycles.append(figures)
        print(json.dumps({k: v for k, v in figures.items() if k != "runs"}), flush=True)

    since = time.time()
    empty = json.loads(run(refresh, env).stdout.strip().splitlines()[-1])
    empty_assets = sorted({a for r in empty["runs"] for a in r["assets"]})
    print(f"refresh that brings nothing: {empty['wall_s']} s, materialized {empty_assets}", flush=True)

    promoted = [c["champion"].split()[0][1:] for c in cycles if c["promoted"]]
    regressions = sum(served_regression(client, version) for version in promoted)
    worst_ratio = max((c["requests"] / c["requests_needed"] for c in cycles if c["requests_needed"]), default=0)
    targets = {
        "requests_over_need_met": worst_ratio <= TARGETS["requests_over_need"],
        "served_regressions_met": regressions == TARGETS["served_regressions"],
        "empty_refresh_under_60_s_met": empty["wall_s"] < TARGETS["empty_refresh_s"],
        "empty_refresh_trains_nothing_met": not set(empty_assets) & {*MODELS, "model_comparison"},
    }
    print("targets:", targets, flush=True)
    initial_models = {
        name: {
            key: report.get(key)
            for key in ("validation_macro_f1", "temporal_test_years", "temporal_test_movies", "temporal_test_macro_f1")
        }
        | {"test_macro_f1": report["test"]["macro_f1"], "test_movies": report["n_test"]}
        for name in MODELS
        if (report := initial_reports.get(name))
    }
    print(
        json.dumps(
            {
                "snapshot": str(snapshot_dir),
                "config": {"initial": json.loads(args.config_json), "cycles": json.loads(args.cycle_config_json)},
                "initial_models": initial_models,
                "initial_as_of": as_of,
                "initial_build_s": build_s,
                "newest_fixed_set": {"released_after": newest_after, "movies": newest_n},
                "cycles": cycles,
                "served_regressions": regressions,
                "worst_requests_over_need": round(worst_ratio, 3),
                "empty_refresh_s": empty["wall_s"],
                "empty_refresh_materialized": empty_assets,
                "targets": targets,
            }
        )
    )


if __name__ == "__main__":
    main()
