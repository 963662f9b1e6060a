"""Scale-out: the executor the configuration selects, the Kubernetes step config on the GPU steps, and a
real local cluster (PostgreSQL, Redis, two Celery workers, the Dagster daemon and webserver) that
materializes a selection with every step on a worker and its state in PostgreSQL."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from genre_pipeline import settings
from genre_pipeline.cluster import databases, local
from genre_pipeline.cluster.runs import Deployment
from genre_pipeline.defs.execution import GPU_QUEUE, TMDB_POOL, build_executor
from genre_pipeline.store import DataStore
from genre_pipeline_tests.conftest import free_port

REQUIRE_CLUSTER_ENV = "GENRE_PIPELINE_REQUIRE_CLUSTER"  # .ci/run sets it: there missing services fail
TMDB_ASSETS = ["tmdb_configuration", "tmdb_genres", "raw_discover_pages", "movie_details", "posters"]
GPU_ASSETS = {"text_model", "image_model", "fusion_model", "stacked_model"}
EMBEDDING_ASSETS = ("text_embeddings", "poster_embeddings")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "in_process"),
        ({settings.EXECUTOR_ENV: "multiprocess"}, "multiprocess"),
        (
            {
                settings.EXECUTOR_ENV: "celery",
                settings.CELERY_BROKER_ENV: "redis://h/0",
                settings.CELERY_BACKEND_ENV: "redis://h/1",
            },
            "celery",
        ),
        ({settings.EXECUTOR_ENV: "k8s"}, "k8s"),
    ],
)
def test_the_environment_selects_the_executor(env, expected):
    assert build_executor(env).name == expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({settings.EXECUTOR_ENV: "dask"}, "expected one of in_process, multiprocess, celery, k8s"),
        ({settings.EXECUTOR_ENV: "celery", settings.CELERY_BROKER_ENV: "redis://h/0"}, settings.CELERY_BACKEND_ENV),
    ],
)
def test_an_unusable_executor_setting_is_refused(env, message):
    with pytest.raises(ValueError, match=message):
        build_executor(env)


def _ops_by_name():
    """Every op of the definitions by name (an embedding asset is a graph: its shards and their merge)."""
    from genre_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {graph.assets_def_for_key(key) for key in graph.get_all_asset_keys()}
    return {op.name: op for asset in assets for op in asset.node_def.iterate_op_defs()}


def test_gpu_steps_are_routed_and_sized_and_tmdb_steps_share_the_pool():
    # Imported here: the kubernetes client it brings quiets urllib3's logger for the whole session.
    from dagster_k8s.job import get_user_defined_k8s_config

    ops = _ops_by_name()
    shards = {f"{asset}_shard_{n}" for asset in EMBEDDING_ASSETS for n in range(settings.embedding_shards())}
    gpu = {name for name, op in ops.items() if op.tags.get("dagster-celery/queue") == GPU_QUEUE}
    assert gpu == GPU_ASSETS | shards
    for name in gpu:
        # The tags as Dagster stores them (strings), parsed by dagster-k8s as its executor will.
        tags = {key: v if isinstance(v, str) else json.dumps(v) for key, v in ops[name].tags.items()}
        config = get_user_defined_k8s_config(tags)
        assert config.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1", name
    assert {f"{asset}_merge" for asset in EMBEDDING_ASSETS} <= set(ops) - gpu
    for name in set(ops) - gpu:
        assert get_user_defined_k8s_config(dict(ops[name].tags)).container_config == {}, name
    assert {name for name, op in ops.items() if op.pool == TMDB_POOL} == set(TMDB_ASSETS)


@pytest.mark.parametrize("executor", ["k8s", "celery"])
def test_the_code_location_loads_with_each_scale_out_executor(executor, tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        settings.EXECUTOR_ENV: executor,
        settings.CELERY_BROKER_ENV: "redis://127.0.0.1:6379/0",
        settings.CELERY_BACKEND_ENV: "redis://127.0.0.1:6379/1",
    }
    # Loaded as the webserver and daemon load it, then the job's executor: the one the environment named.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import dagster as dg; from genre_pipeline.definitions import defs; "
            "dg.Definitions.validate_loadable(defs); "
            "print(defs.resolve_implicit_global_asset_job_def().executor_def.name)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == executor


@pytest.fixture
def services_installed():
    missing = [name for name in ("redis-server", "pg_ctl") if not _installed(name)]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install postgresql redis-server)"
        if os.environ.get(REQUIRE_CLUSTER_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_CLUSTER_ENV}=1 requires them")
        pytest.skip(message)


def _installed(program: str) -> bool:
    try:
        return bool(databases.postgres_program(program)) if program == "pg_ctl" else bool(shutil.which(program))
    except databases.ClusterError:
        return False


@pytest.fixture
def cluster(services_installed):
    # Not under pytest's tmp_path: its parents are private to this user, and PostgreSQL runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="genre-cluster-"))
    ports = local.Ports(postgres=free_port(), redis=free_port(), webserver=free_port())
    layout = local.up(root, workers=2, ports=ports)
    try:
        yield layout, ports
    finally:
        local.down(root)
        shutil.rmtree(root, ignore_errors=True)


def test_local_cluster_materializes_on_workers_with_state_in_postgres(cluster, monkeypatch):
    layout, ports = cluster
    env = local.read_environment(layout)
    assert set(local.running_services(layout)) == {"redis", "daemon", "webserver", "worker-1", "worker-2"}
    workers = local.ping_workers(env)
    assert [name.split("@")[0] for name in workers] == ["worker-1", "worker-2"]

    deployment = Deployment(env["DAGSTER_WEBSERVER_URL"])
    selection = [*TMDB_ASSETS, "movies_clean", "genre_labels", "dataset_splits", "baseline_model"]
    run_id = deployment.launch(selection, partition_range=_years(env))
    chain = deployment.wait(run_id, timeout_s=900)
    assert [run["status"] for run in chain] == ["SUCCESS"], [run["runId"] for run in chain]

    steps = deployment.steps(run_id)
    assert {step.step for step in steps} >= set(selection)
    assert all(step.status == "SUCCESS" for step in steps), steps
    # Every step, asset checks included, ran in one of the two Celery workers, none in the run's process.
    assert {step.worker for step in steps} <= set(workers) and None not in {step.worker for step in steps}
    # The tmdb_api pool (limit 1 in the instance's dagster.yaml): TMDb steps one after another.
    tmdb = sorted((step.started, step.ended) for step in steps if step.step in TMDB_ASSETS)
    assert all(previous[1] <= following[0] for previous, following in zip(tmdb, tmdb[1:])), tmdb

    # The data in the shared folder, the run in PostgreSQL, the model's MLflow run in PostgreSQL with
    # its artifacts in the shared folder.
    store = DataStore(Path(env[settings.DATA_DIR_ENV]) / "demo")
    assert len(store.read_table(store.movies_clean_file)) > 100
    assert _psql(env, ports, databases.DAGSTER_DB, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == "SUCCESS"
    monkeypatch.setenv("PGPASSWORD", env["PGPASSWORD"])
    tracking_uri = env[settings.TRACKING_URI_ENV]
    assert tracking_uri.startswith("postgresql+psycopg2://") and env["PGPASSWORD"] not in tracking_uri
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("genre-pipeline").experiment_id], f"tags.dagster_run_id = '{run_id}'"
    )
    assert [run.data.tags["mlflow.runName"] for run in runs] == ["baseline_model"]
    assert runs[0].info.artifact_uri.startswith(store.mlflow_artifacts_dir.resolve().as_uri())

    stopped = local.down(layout.root)
    assert set(stopped) == {"redis", "daemon", "webserver", "worker-1", "worker-2", "postgres"}
    assert local.running_services(layout) == {}
    assert local._processes_of_instance(layout.dagster_home) == []  # code servers and run workers too
    assert all(local.port_free(port) for port in (ports.postgres, ports.redis, ports.webserver))


def _years(env: dict) -> tuple[str, str]:
    first, last = settings.year_range(settings.choose_source(env), env)
    return str(first), str(last)


def _psql(env: dict, ports: local.Ports, database: str, query: str) -> str:
    result = subprocess.run(
        [
            databases.postgres_program("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(ports.postgres),
            "-U",
            databases.DB_USER,
            "-d",
            database,
            "-Atc",
            query,
        ],
        env={**os.environ, "PGPASSWORD": env["PGPASSWORD"]},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()
