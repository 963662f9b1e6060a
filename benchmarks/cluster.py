"""The demo catalog's whole chain through the local cluster (PostgreSQL, Redis, Celery workers, Dagster
daemon and webserver) against the embedded default; two workers against one; a worker killed mid-step.

    python benchmarks/cluster.py [--root /var/tmp/genre-cluster-bench]

1. Embedded: `dagster asset materialize --select '*' --partition-range ...` in one process (sqlite).
2. Cluster, two workers: the same selection queued through the webserver; the worker of each step,
   and of each embedding shard (it fails unless the shards ran on both workers). The label matrix,
   the split, the embeddings and every model's test metrics are compared with the embedded run's.
3. One worker: worker-2 stopped; the embedding and model steps again, on a copy of the data folder
   without embeddings and models (run config points the storage resource at it). Their wall time
   (first start to last end) against the same steps of step 2.
4. Kill: both workers; text_model again; its worker process gets SIGKILL once the step has started.
   The run fails, the daemon retries it from the failure, the retry succeeds; every other file of the
   data folder is unchanged.
Prints one JSON line last.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from genre_pipeline import settings
from genre_pipeline.cluster import local
from genre_pipeline.cluster.runs import Deployment
from genre_pipeline.models.encoders.cache import Embeddings
from genre_pipeline.store import DataStore

MODELS = ("baseline_model", "text_model", "image_model", "fusion_model", "stacked_model")
EMBEDDING_AND_MODEL_STEPS = ("text_embeddings", "poster_embeddings", *MODELS)
SOURCE = "demo"
CLUSTER_VARIABLES = (
    settings.EXECUTOR_ENV,
    settings.TRACKING_URI_ENV,
    "MLFLOW_TRACKING_URI",
    settings.CELERY_BROKER_ENV,
    settings.CELERY_BACKEND_ENV,
    local.POSTGRES_URL_ENV,
    "PGPASSWORD",
)


def embedded_run(folder: Path, years: tuple[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    env.update(DAGSTER_HOME=str(folder / "dagster_home"), **{settings.DATA_DIR_ENV: str(folder / "data")})
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "genre_pipeline.definitions",
            "--select",
            "*",
            "--partition-range",
            "...".join(years),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def same_embeddings(embedded: DataStore, cluster: DataStore) -> bool:
    """Every embeddings file of one folder in the other, with the same movies, keys and vectors, bit for bit."""
    names = sorted(p.name for p in embedded.embeddings_dir.glob("*.npz"))
    if not names or names != sorted(p.name for p in cluster.embeddings_dir.glob("*.npz")):
        return False
    pairs = [(Embeddings.load(embedded.embeddings_dir / n), Embeddings.load(cluster.embeddings_dir / n)) for n in names]
    return all(
        np.array_equal(a.ids, b.ids) and np.array_equal(a.keys, b.keys) and np.array_equal(a.vectors, b.vectors)
        for a, b in pairs
    )


def compare(embedded: DataStore, cluster: DataStore) -> dict:
    """The same label matrix, split and embeddings exactly; every model's test and validation figures
    to 1e-6."""
    labels = pd.read_parquet(embedded.labels_file("full")).equals(pd.read_parquet(cluster.labels_file("full")))
    splits = pd.read_parquet(embedded.splits_file).equals(pd.read_parquet(cluster.splits_file))
    embeddings = same_embeddings(embedded, cluster)
    differences = {}
    for model in MODELS:
        a, b = (json.loads(store.model_report_file(model).read_text()) for store in (embedded, cluster))
        figures = {**{f"test_{k}": v for k, v in a["test"].items()}, "validation_macro_f1": a["validation_macro_f1"]}
        other = {**{f"test_{k}": v for k, v in b["test"].items()}, "validation_macro_f1": b["validation_macro_f1"]}
        numeric = [k for k, v in figures.items() if isinstance(v, (int, float))]
        differences[model] = max(abs(float(figures[k]) - float(other[k])) for k in numeric)
    return {
        "same_label_matrix": bool(labels),
        "same_split": bool(splits),
        "same_embeddings": embeddings,
        "max_metric_difference": max(differences.values()),
        "metric_difference_per_model": differences,
        "identical": bool(labels and splits and embeddings and max(differences.values()) <= 1e-6),
    }


def asset_of(step_key: str) -> str:
    """The asset a step materializes: an embedding asset's steps are ``<asset>.<asset>_shard_<n>`` and
    ``<asset>.<asset>_merge``."""
    return step_key.split(".")[0]


def shard_workers(steps) -> dict[str, list[str]]:
    """The workers that ran each embedding asset's shards."""
    shards = [step for step in steps if "_shard_" in step.step]
    return {
        a: sorted({s.worker for s in shards if asset_of(s.step) == a})
        for a in sorted({asset_of(s.step) for s in shards})
    }


def span(steps, names) -> float:
    chosen = [step for step in steps if asset_of(step.step) in names]
    return round(max(step.ended for step in chosen) - min(step.started for step in chosen), 1)


def checksums(root: Path, skip: tuple[str, ...]) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part in skip for part in path.relative_to(root).parts)
    }


def storage_config(data_dir: Path) -> dict:
    return {"resources": {"storage": {"config": {"data_dir": str(data_dir), "source": SOURCE}}}}


class FaultMissed(RuntimeError):
    """The worker kill did not hit a running step: the run measured no recovery."""


def kill_when_started(deployment: Deployment, run_id: str, step: str, timeout_s: float = 600) -> int:
    """SIGKILL to the process executing ``step`` one second after the step started; FaultMissed when the
    step had already ended by then or its process was gone (a kill that hits nothing proves nothing)."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        started = [entry for entry in starts if entry.step_key == step]
        if started:
            time.sleep(1)  # mid-step: training has begun
            ended = [
                entry
                for kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
                for entry in instance.all_logs(run_id, of_type=kind)
                if entry.step_key == step
            ]
            if ended:
                raise FaultMissed(f"{step} ended within a second of starting: there was no running step to kill")
            pid = started[0].dagster_event.pid  # the Celery pool process executing the step
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                raise FaultMissed(f"the process {pid} that started {step} was gone before the kill") from None
            return pid
        time.sleep(0.2)
    raise RuntimeError(f"{step} did not start in {run_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/var/tmp/genre-cluster-bench"))
    args = parser.parse_args()
    root = args.root.resolve()
    local.down(root / "cluster")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    years = tuple(str(y) for y in settings.year_range(settings.choose_source({}), {}))

    embedded_s = embedded_run(root / "embedded", years)
    print(f"embedded whole chain: {embedded_s:.1f} s", flush=True)

    started = time.monotonic()
    layout = local.up(root / "cluster", workers=2)
    up_s = time.monotonic() - started
    os.environ.update(local.read_environment(layout))  # the instance and MLflow of the cluster
    deployment = Deployment(os.environ["DAGSTER_WEBSERVER_URL"])
    try:
        started = time.monotonic()
        run_id = deployment.launch(deployment.asset_keys(), partition_range=years)
        chain = deployment.wait(run_id)
        cluster_s = time.monotonic() - started
        assert chain[-1]["status"] == "SUCCESS", chain
        two_workers = deployment.steps(run_id)
        for step in two_workers:
            print(f"  {step.step:<44} {step.worker:<14} {step.seconds:>7.1f} s", flush=True)
        cluster_store = DataStore(layout.data_dir / SOURCE)
        identity = compare(DataStore(root / "embedded" / "data" / SOURCE), cluster_store)
        shards = shard_workers(two_workers)
        print(f"cluster whole chain: {cluster_s:.1f} s; {identity}; embedding shards on {shards}", flush=True)

        # One worker, same steps, on a copy of the data folder without embeddings and models.
        single = root / "single-worker"
        shutil.copytree(
            cluster_store.root, single / SOURCE, ignore=shutil.ignore_patterns("embeddings", "models", "mlartifacts")
        )
        local.stop_service(layout, local.worker_name(2))
        one_id = deployment.launch(list(EMBEDDING_AND_MODEL_STEPS), run_config=storage_config(single))
        one_chain = deployment.wait(one_id)
        assert one_chain[-1]["status"] == "SUCCESS", one_chain
        one_worker = deployment.steps(one_id)
        two_s, one_s = span(two_workers, EMBEDDING_AND_MODEL_STEPS), span(one_worker, EMBEDDING_AND_MODEL_STEPS)
        print(f"embedding and model steps: two workers {two_s} s, one worker {one_s} s", flush=True)

        # A worker killed mid-step.
        local.start_worker(layout, 2)
        while len(local.ping_workers(os.environ)) < 2:
            time.sleep(1)
        before = checksums(single / SOURCE, skip=("text_model", "mlartifacts", "tmdb.lock"))
        kill_id = deployment.launch(["text_model"], run_config=storage_config(single))
        killed_pid = kill_when_started(deployment, kill_id, "text_model")
        kill_chain = deployment.wait(kill_id)
        after = checksums(single / SOURCE, skip=("text_model", "mlartifacts", "tmdb.lock"))
        report = DataStore(single / SOURCE).model_report_file("text_model")
        kill = {
            "killed_pid": killed_pid,
            "runs": [run["status"] for run in kill_chain],
            # The fault happened only if the killed run failed and a retry ran: a SUCCESS alone means
            # the kill hit no running step, and then nothing about recovery was measured.
            "fault_happened": kill_chain[0]["status"] != "SUCCESS" and len(kill_chain) > 1,
            "retry_succeeded": kill_chain[-1]["status"] == "SUCCESS" and len(kill_chain) > 1,
            "report_written": report.is_file(),
            "other_files_unchanged": before == after,
            "files_checked": len(before),
        }
        print(f"worker killed mid-step: {kill}", flush=True)
    finally:
        local.down(layout.root)

    print(
        json.dumps(
            {
                "benchmark": "cluster",
                "machine_cores": os.cpu_count(),
                "embedded_whole_chain_s": round(embedded_s, 1),
                "cluster_up_s": round(up_s, 1),
                "cluster_whole_chain_s": round(cluster_s, 1),
                "steps": len(two_workers),
                "workers_per_step": {step.step: step.worker for step in two_workers},
                "steps_per_worker": {
                    w: sum(s.worker == w for s in two_workers) for w in sorted({s.worker for s in two_workers})
                },
                "embedding_shard_workers": shards,
                **{k: v for k, v in identity.items() if k != "metric_difference_per_model"},
                "embedding_and_model_steps_two_workers_s": two_s,
                "embedding_and_model_steps_one_worker_s": one_s,
                "one_over_two_workers_ratio": round(one_s / two_s, 3),
                "kill": kill,
            }
        )
    )
    if not (kill["fault_happened"] and kill["retry_succeeded"]):
        raise SystemExit(f"the worker kill measured no recovery: {kill}")
    if not shards or any(len(workers) < 2 for workers in shards.values()):
        raise SystemExit(f"the embedding shards did not run on both workers: {shards}")
    if not identity["identical"]:
        raise SystemExit(f"the cluster's results differ from the embedded run's: {identity}")


if __name__ == "__main__":
    main()
