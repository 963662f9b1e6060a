"""What each step of the chain costs as the catalog grows: wall time and peak memory per step, at
several catalog sizes, a fitted growth exponent per step, and a projection to 500,000 movies.

    python benchmarks/scale.py --sizes 5000,15000,45000 [--root /var/tmp/genre-scale]

For each size: a generated catalog of that many movies (``tmdb.demo_catalog``: genre-consistent
text and posters over ten release years; its overviews are 10-30 words where TMDb's are mostly
30-80, its posters 342x513 JPEGs of shapes, its label frequencies a fixed draw, so text steps cost
less per movie than on real data), laid out like a snapshot and replayed through the project's
replay server at 400 requests/s (the real API's limit is in README's capacity plan). Then, in a
fresh data folder and Dagster instance, each step of the chain (the Definitions' assets in
dependency order, default settings, as `make run` trains) runs as its own
`dagster asset materialize` process:
- wall: the step's own time from Dagster's step stats (start to end, without process start-up);
- peak RSS: the largest process of the step's process tree (``os.wait4``'s ``ru_maxrss``), which
  under the multiprocess executor is the step's worker;
and the data folder's size once the chain has run.
Per step, the exponent k of wall ∝ N^k (least squares on log-log over the sizes), and the same for
memory. Projected to 500k movies from the largest size, each figure is the larger of that power law
and the straight line through the two largest sizes: fixed costs make k small at small sizes, and a
power law with such a k would promise too little. With W workers, the steps that split by movie
(the embedding shards) divide by W; ingestion does not: every worker shares one TMDb quota. The
last line is one JSON object.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET_MOVIES = 500_000
SPLITS_BY_MOVIE = {"text_embeddings", "poster_embeddings"}
PARTITIONED = {"raw_discover_pages"}


def chain() -> list[str]:
    from genre_pipeline.definitions import defs

    return [key.to_user_string() for key in defs.resolve_asset_graph().toposorted_asset_keys]


def run_step(step: str, env: dict, years: str, config: dict) -> tuple[float, float]:
    """(the step's wall seconds from Dagster's step stats, peak RSS in MB of its process tree)."""
    import dagster as dg

    command = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", "--select", step]
    if step in PARTITIONED:
        command += ["--partition-range", years]
    command += ["--config-json", json.dumps(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{step} failed:\n{stderr.decode()[-3000:]}")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # the instance's yaml reads its folder from it
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    run = instance.get_runs(limit=1)[0]
    stats = instance.get_run_step_stats(run.run_id)
    wall = sum(s.end_time - s.start_time for s in stats if s.start_time and s.end_time)
    return wall, usage.ru_maxrss / 1024


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(size); None when a value is not positive."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    xs, ys = [math.log(s) for s in sizes], [math.log(v) for v in values]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def project(sizes: list[int], values: list[float], k: float | None) -> float:
    """``values`` at TARGET_MOVIES: the larger of the power law of exponent ``k`` from the largest size
    and the straight line through the two largest sizes (never below the largest size's figure)."""
    power = values[-1] * (TARGET_MOVIES / sizes[-1]) ** max(k or 0.0, 0.0)
    if len(sizes) < 2:
        return power
    slope = (values[-1] - values[-2]) / (sizes[-1] - sizes[-2])
    return max(power, values[-1] + max(slope, 0.0) * (TARGET_MOVIES - sizes[-1]))


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure_size(n_movies: int, root: Path, steps: list[str]) -> tuple[dict[str, tuple[float, float]], float]:
    """Each step's (wall seconds, peak RSS MB) at ``n_movies``, and the data folder's size in MB after."""
    from genre_pipeline.tmdb import demo_catalog

    folder = root / f"movies-{n_movies}"
    shutil.rmtree(folder, ignore_errors=True)
    catalog = demo_catalog.generate(folder / "catalog", n_movies=n_movies)
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GENRE_PIPELINE_DATA": str(folder / "data"),
        "GENRE_PIPELINE_SNAPSHOT": str(catalog),
    }
    env.pop("GENRE_PIPELINE_YEARS", None)
    years = subprocess.run(
        [BIN / "genre-pipeline", "years"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    tmdb = {"source": "snapshot", "snapshot_dir": str(catalog), "rate_limit_per_s": 400.0, "max_workers": 16}
    config = {"resources": {"tmdb": {"config": tmdb}}}
    measured = {}
    for step in steps:
        measured[step] = run_step(step, env, years, config)
        print(f"{n_movies:>7} movies  {step:<24} {measured[step][0]:>8.1f} s  {measured[step][1]:>7.0f} MB", flush=True)
    return measured, folder_mb(folder / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,15000,45000", help="catalog sizes, comma-separated")
    parser.add_argument("--root", type=Path, default=Path("/var/tmp/genre-scale"))
    parser.add_argument("--workers", type=int, default=4, help="the W of the projection on W workers")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    steps = chain()
    started = time.monotonic()
    measured = {size: measure_size(size, args.root.resolve(), steps) for size in sizes}
    results = {size: steps_at_size for size, (steps_at_size, _) in measured.items()}
    data_mb = [measured[size][1] for size in sizes]
    largest = sizes[-1]
    rows = []
    for step in steps:
        walls = [results[size][step][0] for size in sizes]
        memory = [results[size][step][1] for size in sizes]
        time_k, memory_k = exponent(sizes, walls), exponent(sizes, memory)
        projected_s, projected_mb = project(sizes, walls, time_k), project(sizes, memory, memory_k)
        rows.append(
            {
                "step": step,
                "exponent": round(time_k, 3) if time_k is not None else None,
                "memory_exponent": round(memory_k, 3) if memory_k is not None else None,
                "wall_s": {str(size): round(w, 1) for size, w in zip(sizes, walls)},
                "peak_rss_mb": {str(size): round(m) for size, m in zip(sizes, memory)},
                "projected_500k_s": round(projected_s),
                "projected_500k_rss_mb": round(projected_mb),
                "splits_by_movie": step in SPLITS_BY_MOVIE,
            }
        )
    exponents = [row["exponent"] for row in rows if row["exponent"] is not None]
    one_machine = sum(row["projected_500k_s"] for row in rows)
    on_workers = sum(row["projected_500k_s"] / (args.workers if row["splits_by_movie"] else 1) for row in rows)
    print(f"{'step':<24} {'k (time)':>8} {'k (RSS)':>8}  " + "  ".join(f"{s:>14}" for s in sizes) + "  500k (proj.)")
    for row in rows:
        cells = "  ".join(f"{row['wall_s'][str(s)]:>6.1f} s {row['peak_rss_mb'][str(s)]:>5} MB" for s in sizes)
        print(
            f"{row['step']:<24} {row['exponent'] if row['exponent'] is not None else '-':>8} "
            f"{row['memory_exponent'] if row['memory_exponent'] is not None else '-':>8}  {cells}  "
            f"{row['projected_500k_s']:>7} s {row['projected_500k_rss_mb']:>6} MB"
        )
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "machine_cores": os.cpu_count(),
                "sizes": sizes,
                "steps": rows,
                "data_folder_mb": {str(size): round(mb) for size, mb in zip(sizes, data_mb)},
                "projection_500k": {
                    "movies": TARGET_MOVIES,
                    "from_size": largest,
                    "one_machine_s": round(one_machine),
                    f"on_{args.workers}_workers_s": round(on_workers),
                    "peak_rss_mb": max(row["projected_500k_rss_mb"] for row in rows),
                    "data_folder_gb": round(project(sizes, data_mb, exponent(sizes, data_mb)) / 1024, 1),
                    "worst_step_exponent": max(exponents, default=None),
                },
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
