"""Shared fixtures: a small demo catalog the tests generate, replay servers over it, and the models
trained on it once per session."""

import os

# Under pytest-xdist each of the two workers gets one core's worth of threads (inherited by the
# commands the tests start): two workers each spinning two OpenMP or BLAS threads on two cores run
# far slower than one thread each. Set before numpy, torch or scikit-learn load.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import requests
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlflow import MlflowClient

from genre_pipeline import settings, tracking
from genre_pipeline.champion import registry, scoring
from genre_pipeline.defs import dataset, ingestion, models, monitoring
from genre_pipeline.defs.resources import (
    DataQualityResource,
    MonitoringResource,
    StorageResource,
    TMDbResource,
    TrainingResource,
)
from genre_pipeline.models.encoders import MINILM_NAMES
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.client import ClientPolicy, TMDbClient
from genre_pipeline.tmdb.faults import Faults
from genre_pipeline.tmdb.replay import serve_snapshot

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


def make_client(server, tmp_path=None, *, token=TOKEN, api_key=None, **policy) -> TMDbClient:
    """A client of ``server`` with a fast policy; ``policy`` overrides ClientPolicy fields."""
    defaults = dict(rate_limit_per_s=500, backoff_base_s=0.01, timeout_s=5)
    return TMDbClient(
        server.api_url,
        token=token,
        api_key=api_key,
        cache_dir=(tmp_path / "cache") if tmp_path else None,
        policy=ClientPolicy(**{**defaults, **policy}),
    )


@pytest.fixture
def faulty_replay(demo_dir, request):
    with serve_snapshot(demo_dir, token=TOKEN, faults=Faults(**request.param)) as server:
        yield server


# --- materializing the assets --------------------------------------------------------------
ALL_YEARS = {ASSET_PARTITION_RANGE_START_TAG: "2015", ASSET_PARTITION_RANGE_END_TAG: "2024"}
ASSETS = [
    ingestion.tmdb_configuration,
    ingestion.tmdb_genres,
    ingestion.raw_discover_pages,
    ingestion.movie_details,
    ingestion.posters,
]
CHECKS = [ingestion.details_cover_discovered, ingestion.posters_stored_as_recorded]
DATASET_ASSETS = [dataset.movies_clean, dataset.genre_labels, dataset.dataset_splits, dataset.eda_report]
DATASET_CHECKS = [
    dataset.movies_clean_unique_ids,
    dataset.cleaning_drop_fractions,
    dataset.poster_ok_rate,
    dataset.label_matrices_consistent,
    dataset.splits_disjoint_and_covering,
    dataset.every_genre_in_every_split,
]


def pipeline_resources(snapshot_dir, data_dir, source="test", **tmdb_options):
    """Resources for a replay of ``snapshot_dir`` into ``data_dir/source``, with a fast client for tests."""
    tmdb = TMDbResource(
        source="snapshot", snapshot_dir=str(snapshot_dir), rate_limit_per_s=500, backoff_base_s=0.01, **tmdb_options
    )
    return {
        "tmdb": tmdb,
        "storage": StorageResource(data_dir=str(data_dir), source=source),
        "quality": DataQualityResource(),
        "monitoring": MonitoringResource(),
    }


def materialize_all(res, instance, run_config=None):
    """What `make run` does for ingestion: reference data, every year partition in one run, then the rest."""
    results = [
        dg.materialize([ingestion.tmdb_configuration, ingestion.tmdb_genres], resources=res, instance=instance),
        dg.materialize(
            [ingestion.raw_discover_pages], resources=res, instance=instance, tags=ALL_YEARS, run_config=run_config
        ),
        dg.materialize(
            ASSETS + CHECKS, selection=[ingestion.movie_details, ingestion.posters], resources=res, instance=instance
        ),
    ]
    assert all(r.success for r in results)
    return results


def materialize_dataset(res, instance, run_config=None, raise_on_error=True):
    return dg.materialize(
        ASSETS + DATASET_ASSETS + DATASET_CHECKS,
        selection=dg.AssetSelection.assets(*DATASET_ASSETS),
        resources=res,
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


# --- the models and the champion --------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_ASSETS = [
    models.text_embeddings,
    models.poster_embeddings,
    models.baseline_model,
    models.text_model,
    models.image_model,
    models.fusion_model,
    monitoring.champion_on_new_movies,
    monitoring.retraining_decision,
    models.stacked_model,
    models.model_comparison,
    models.challenger_beats_champion,
    models.champion_model,
]
MINILM = MINILM_NAMES[0]
FAST = {"max_epochs": 25, "patience": 5}
# Small training settings: MiniLM (the bundled MPNet's path is the same, five times slower), short head
# training, and a 3-fold, 2-bag stack: cross-fitting and bagging run, on a tenth of the work.
# The temporal evaluation's minimum is lowered to the demo's size (its newest two years hold ~20 movies).
FAST_TRAINING = {
    "resources": {"training": {"config": {"text_encoders": [MINILM], "temporal_min_movies": 10}}},
    "ops": {
        **{name: {"config": FAST} for name in ("text_model", "image_model", "fusion_model")},
        "stacked_model": {"config": {"folds": 3, "stacker_bags": 2, "heads": FAST}},
    },
}


def run_command(args, env, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def source_environment(home: Path, data_dir: Path, snapshot_dir: Path) -> dict:
    """The environment `make run` would see, pointed at a replay of ``snapshot_dir``."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        settings.DATA_DIR_ENV: str(data_dir),
        settings.SNAPSHOT_ENV: str(snapshot_dir),
        settings.YEARS_ENV: "2015-2024",
    }
    for name in ("TMDB_API_READ_ACCESS_TOKEN", "TMDB_API_KEY", "TMDB_BASE_URL"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def trained(demo_dir, tmp_path_factory):
    """The whole graph, once for the session, in one `dagster asset materialize` run as `make run` does
    it (with FAST_TRAINING's settings): ingestion, the data set, every model, the champion and the batch
    predictions, into a temporary data folder and Dagster instance that the tests then read and extend."""
    root = tmp_path_factory.mktemp("trained")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = source_environment(home, root / "data", demo_dir)
    years = run_command([BIN / "genre-pipeline", "years"], env).stdout.strip()
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions"]
    command = materialize + ["--select", "*", "--partition-range", years, "--config-json", json.dumps(FAST_TRAINING)]
    run_command(command, env, timeout=900)
    store = DataStore(next((root / "data").glob("snapshot-catalog-*")))
    with pytest.MonkeyPatch.context() as patch:  # the instance's yaml reads its folder from DAGSTER_HOME
        patch.setenv("DAGSTER_HOME", str(home))
        instance = dg.DagsterInstance.from_config(str(home))
    res = pipeline_resources(demo_dir, root / "data", source=store.root.name)
    res["training"] = TrainingResource(text_encoders=[MINILM])
    return {
        "store": store,
        "uri": tracking.sqlite_uri(store.mlflow_db),
        "stack_uri": stack_champion_store(store, root / "stack-champion"),
        "data_dir": root / "data",
        "resources": res,
        "instance": instance,
        "home": home,
        "years": years,
        "demo_dir": demo_dir,
    }


def stack_champion_store(store: DataStore, folder: Path) -> str:
    """A copy of the tracking store whose @champion is the stacked model (its versions point at the same
    artifacts). The predict and serving tests use it: they exercise the product's model, which reads the
    encoders, posters and metadata, whichever model won on the demo catalog's few validation movies
    (often the TF-IDF baseline, which reads text only)."""
    folder.mkdir()
    shutil.copy(store.mlflow_db, folder / "mlflow.db")
    uri = tracking.sqlite_uri(folder / "mlflow.db")
    make_champion(uri, json.loads(store.model_report_file("stacked_model").read_text()))
    return uri


def make_champion(uri: str, report: dict) -> str:
    """Register the model of a training report in the store at ``uri`` and point @champion at it, as a
    promotion would; returns the new version."""
    tracking.use_store(uri)  # MLflow resolves the logged model's models:/ URI through the process's store
    client = MlflowClient(uri, uri)
    version = client.create_model_version(registry.REGISTERED_MODEL, report["model_uri"], run_id=report["run_id"])
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, version.version)
    return str(version.version)


def model_report(store: DataStore, name: str) -> dict:
    return json.loads(store.model_report_file(name).read_text())


def metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


def stack_frame(store: DataStore, ids) -> pd.DataFrame:
    """Movies of the data folder as the pyfunc model's raw input rows."""
    return scoring.stored_movies(store, ids).rows()


def latest_metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    """The metadata of an asset's latest materialization in ``instance``."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def first_metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    """The metadata of an asset's first materialization in ``instance`` (the session's: the whole-graph run)."""
    (record,) = instance.fetch_materializations(dg.AssetKey(asset), limit=1, ascending=True).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def best_constant_macro_f1(store: DataStore) -> float:
    """Macro-F1 of predicting every genre for every test movie: the best a label-blind rule does."""
    labels = pd.read_parquet(store.labels_file("full"))
    test_ids = pd.read_parquet(store.splits_file).query("split == 'test'")["id"]
    prevalence = labels[labels["id"].isin(test_ids)].drop(columns="id").mean()
    return float((2 * prevalence / (1 + prevalence)).mean())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen | None, seconds: float = 180) -> None:
    """Until ``url`` answers 200; fails at once if ``server`` (the process serving it, if any) exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


# --- a real browser --------------------------------------------------------------------------
REQUIRE_BROWSER_ENV = "GENRE_PIPELINE_REQUIRE_BROWSER"  # .ci/run sets it: there a missing browser fails
NO_BROWSER = "Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """The paths of Debian's Chromium and its chromedriver; nothing is downloaded."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"{NO_BROWSER}, and {REQUIRE_BROWSER_ENV}=1 requires it")
        pytest.skip(NO_BROWSER)
    return browser, driver


# --- the serving tests' server and poster ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    from .serving_support import start_server, stop  # here: serving_support imports this module

    running = start_server(trained, tmp_path_factory.mktemp("serve"))
    yield running
    log = stop(running)
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def poster_file(demo_dir):
    return sorted((demo_dir / "posters").iterdir())[0]


@pytest.fixture(scope="module")
def poster_bytes(poster_file) -> bytes:
    return poster_file.read_bytes()


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_BROWSER in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} browser test(s) NOT RUN: {NO_BROWSER}", red=True, bold=True)


# --- two workers ------------------------------------------------------------------------------
# The modules whose tests read the session's trained models: they run on one worker, which trains once.
# (pytest-xdist's own xdist_group mark does not take effect under pytest 9: its node-id suffix is lost.)
TRAINED_MODULES = {
    *("test_models.py", "test_champion.py", "test_fine_tuning.py", "test_command_line.py"),
    *("test_serving.py", "test_serving_operations.py"),
}
# Modules whose tests share a module-scoped fixture that trains models of its own: one worker each.
SELF_TRAINED_MODULES = {"test_refresh.py"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class TrainedModelsTogether(LoadScopeScheduling):
        """Every test of TRAINED_MODULES in one unit of work, each SELF_TRAINED_MODULES module in one of
        its own; every other test a unit of its own."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            if module in TRAINED_MODULES:
                return "trained-models"
            return module if module in SELF_TRAINED_MODULES else nodeid

    return TrainedModelsTogether(config, log)
