"""The model half under faults, one class at a time on small data (benchmarks/lifecycle_chaos.py runs them
all against a refresh and a live server): a damaged embeddings cache is set aside and encoded again; a
model folder or logged model that differs from its manifest is not whole, and the sensor requests it
again; a run killed between two registry calls leaves a registry the rerun finishes; the tracking
store waits for another process's lock, bounded; a full disk is an error naming the folder; a
champion that fails to load in any way leaves the served one serving."""

import errno
import json
import logging
import sqlite3
import subprocess
import sys
import time

import dagster as dg
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from genre_pipeline import files, tracking
from genre_pipeline.champion import promotion, registry
from genre_pipeline.defs.resources import StorageResource
from genre_pipeline.defs.schedules import damaged_files_sensor
from genre_pipeline.models.encoders import cache
from genre_pipeline.serving.reloader import ChampionReloader
from genre_pipeline.store import DataStore
from genre_pipeline.training import manifest


def encode(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for an encoder: the cache's bookkeeping is under test, not embeddings."""
    return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


def cached(path, texts):
    ids, keys = list(range(len(texts))), [files.content_key(t) for t in texts]
    return cache.update_embeddings(path, ids, keys, texts, encode, lambda: 3)


def test_a_truncated_embeddings_cache_is_set_aside_logged_and_encoded_again(tmp_path, caplog):
    path = tmp_path / "text-x.npz"
    texts = ["a heist", "a haunted house", "two lovers"]
    cached(path, texts)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cache.DamagedEmbeddings, match="text-x.npz is not a whole embeddings file"):
        cache.Embeddings.load(path)
    assert len(cache.pending(path, [0, 1, 2], [files.content_key(t) for t in texts])) == 3
    with caplog.at_level(logging.WARNING):
        embeddings, stats = cached(path, texts)
    assert stats.computed == 3 and np.array_equal(embeddings.vectors, encode(texts))
    assert np.array_equal(cache.Embeddings.load(path).vectors, encode(texts))
    assert len(list(tmp_path.glob("text-x.npz.damaged-*"))) == 1  # kept for a post-mortem, never read
    assert "set aside" in caplog.text


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


@pytest.fixture
def registered(tmp_path):
    """A sqlite tracking store with three runs, each with a small logged model."""
    uri = tracking.sqlite_uri(tmp_path / "mlflow.db")
    tracking.use_tracking(uri, "faults", tmp_path / "mlartifacts")
    logged = []
    for _ in range(3):
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
        logged.append((run.info.run_id, info))
    return {"uri": uri, "client": MlflowClient(uri, uri), "logged": logged}


def register(client, info, run_id: str, champion_version: str | None, f1: float = 0.5) -> str:
    comparison = promotion.Comparison(
        candidate="stacked_model",
        candidate_run_id=run_id,
        candidate_f1=f1,
        label_set="full",
        data="validation",
        margin=0.0,
        champion_version=champion_version,
        champion_model="stacked_model" if champion_version else None,
        champion_label_set="full" if champion_version else None,
        champion_f1=0.4 if champion_version else None,
        inputs_change="",
    )
    tags = {**comparison.tags(), "decision": comparison.verdict()[1]}
    return str(mlflow.register_model(info.model_uri, registry.REGISTERED_MODEL, tags=tags).version)


def test_a_run_killed_after_moving_champion_leaves_a_challenger_the_rerun_clears(registered):
    client, logged = registered["client"], registered["logged"]
    first = register(client, logged[0][1], logged[0][0], None)
    assert promotion.promote_challenger(client)[0] is False  # no challenger yet
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, first)
    second = register(client, logged[1][1], logged[1][0], first)
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHALLENGER_ALIAS, second)
    # champion_model killed between its calls: the decision tagged and @champion moved, @challenger still set.
    client.set_model_version_tag(registry.REGISTERED_MODEL, second, "promoted", "true")
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, second)
    verdict = promotion.challenger_verdict(client)
    assert verdict.promote and not verdict.failure and "is the champion already" in verdict.decision
    promoted, _ = promotion.promote_challenger(client)
    assert promoted and str(registry.current_champion(client)["version"]) == second
    assert registry.current_champion(client, registry.CHALLENGER_ALIAS) is None


def test_a_version_registered_before_a_kill_is_the_challenger_again_not_a_second_version(registered):
    client, logged = registered["client"], registered["logged"]
    first = register(client, logged[0][1], logged[0][0], None)
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, first)
    run_id = logged[1][0]
    # model_comparison killed between registering the candidate and pointing @challenger at it.
    second = register(client, logged[1][1], run_id, first)
    challenge = promotion._compared_already(client, run_id, registry.current_champion(client))
    assert challenge.challenger_version == second
    assert str(registry.current_champion(client, registry.CHALLENGER_ALIAS)["version"]) == second
    assert promotion.promote_challenger(client)[0] is True
    versions = client.search_model_versions(f"name='{registry.REGISTERED_MODEL}' and run_id='{run_id}'")
    assert len(versions) == 1 and str(registry.current_champion(client)["version"]) == second
    # Decided now: a later rerun of the same comparison registers nothing and moves nothing.
    assert promotion._compared_already(client, run_id, {"version": first}).challenger_version is None


def test_a_model_folder_or_logged_model_that_differs_from_its_manifest_is_not_whole(registered, tmp_path):
    store = DataStore(tmp_path / "data")
    folder = store.model_dir("text_model")
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"run_id": "r"}))
    (folder / "per_genre.csv").write_text("genre,f1\nDrama,0.5\n")
    assert "its training did not finish" in manifest.damage(store, "text_model")
    manifest.write(folder, registered["logged"][0][1].model_id)
    assert manifest.damage(store, "text_model") is None and manifest.damaged(store) == {}
    (folder / "per_genre.csv").write_text("genre,f1\nDra")
    assert "per_genre.csv missing or changed" in manifest.damage(store, "text_model")
    (folder / "per_genre.csv").write_text("genre,f1\nDrama,0.5\n")
    logged = json.loads((folder / manifest.MANIFEST_FILE).read_text())["logged_model"]
    model_file = next(
        p for p in sorted((tmp_path / "mlartifacts").rglob("python_model.pkl")) if logged["folder"] in str(p)
    )
    model_file.write_bytes(model_file.read_bytes()[:10])
    assert "the logged model of text_model" in manifest.damage(store, "text_model")

    instance = dg.DagsterInstance.ephemeral()
    storage = StorageResource(data_dir=str(tmp_path), source="data")
    request = damaged_files_sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage}))
    assert isinstance(request, dg.RunRequest) and request.asset_selection == [dg.AssetKey("text_model")]


def test_the_sensor_requests_a_damaged_embeddings_cache_and_skips_whole_files(tmp_path):
    store = DataStore(tmp_path / "data")
    path = store.embeddings_file("image", "efficientnet-lite0", "onnx-int8")
    cached(path, ["poster bytes"])
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"storage": StorageResource(data_dir=str(tmp_path), source="data")}
    )
    assert isinstance(damaged_files_sensor(context), dg.SkipReason)
    path.write_bytes(path.read_bytes()[:40])
    request = damaged_files_sensor(context)
    assert request.asset_selection == [dg.AssetKey("poster_embeddings")]


HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


@pytest.mark.parametrize("timeout_s, held_s, waits", [(30, 4, True), (1, 4, False)])
def test_a_tracking_store_held_by_another_process_is_waited_for_up_to_the_timeout(
    tmp_path, monkeypatch, timeout_s, held_s, waits
):
    """MLflow's own busy timeout (20 s) is replaced by ours both ways: 1 s fails a write held 4 s (MLflow's
    would have waited), 30 s lets it through."""
    monkeypatch.setenv(tracking.LOCK_TIMEOUT_ENV, str(timeout_s))
    db = tmp_path / "mlflow.db"
    uri = tracking.sqlite_uri(db)
    tracking.use_tracking(uri, "locks", tmp_path / "mlartifacts")
    client = MlflowClient(uri, uri)
    run_id = client.create_run(mlflow.get_experiment_by_name("locks").experiment_id).info.run_id
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db), str(held_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        if waits:
            client.log_param(run_id, "after_the_lock", "yes")
            assert client.get_run(run_id).data.params["after_the_lock"] == "yes"
            assert time.monotonic() - started > held_s - 2  # it waited for the holder
        else:
            with pytest.raises(Exception, match="database is locked"):
                client.log_param(run_id, "during_the_lock", "no")
            assert time.monotonic() - started < held_s - 1  # bounded by our timeout, not MLflow's 20 s
    finally:
        holder.wait(timeout=30)


def test_a_full_disk_is_an_error_naming_the_folder_and_its_free_space(tmp_path):
    with pytest.raises(OSError) as raised:
        with open("/dev/full", "wb") as full:  # a real ENOSPC from the kernel
            full.write(b"x" * 4096)
    assert files.out_of_space(raised.value) is raised.value and raised.value.errno == errno.ENOSPC
    message = files.out_of_space_message(tmp_path, raised.value)
    assert f"no space left on the device of {tmp_path}" in message and "MiB free" in message
    wrapped = RuntimeError("(raised as a result of Query-invoked autoflush)")
    # As SQLAlchemy words it: a note first, the database's own words on the next line.
    full = sqlite3.OperationalError(
        "(raised as a result of Query-invoked autoflush)\n(sqlite3) database or disk is full"
    )
    wrapped.__cause__ = full
    assert files.out_of_space(wrapped) is full and files.out_of_space(ValueError("bad value")) is None
    message = files.out_of_space_message(tmp_path, files.out_of_space(wrapped))
    assert "MiB free): (sqlite3) database or disk is full. Free space" in message


def test_a_champion_that_fails_to_load_in_any_way_leaves_the_served_one_serving(registered):
    client, logged = registered["client"], registered["logged"]
    first = register(client, logged[0][1], logged[0][0], None)
    client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, first)

    class Loaded:
        def __init__(self, version):
            self.info = {"version": version, "model": "stacked_model"}

        def predict_rows(self, rows, inputs_checked):
            return rows

    broken = set()

    def load(uri, version):
        if version in broken:
            raise EOFError("Ran out of input")  # what unpickling a truncated file raises
        return Loaded(version)

    def wait_until(condition) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)

    reloader = ChampionReloader(registered["uri"], poll_interval_s=0.2, load=load)
    reloader.start()
    try:
        wait_until(lambda: reloader.current is not None)
        second = register(client, logged[1][1], logged[1][0], first)
        broken.add(second)
        client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, second)
        wait_until(lambda: reloader.last_error is not None)
        assert reloader.current.version == first and "EOFError" in reloader.last_error
        third = register(client, logged[2][1], logged[2][0], second)
        client.set_registered_model_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS, third)
        wait_until(lambda: reloader.current.version == third)
        assert reloader.current.version == third and reloader.last_error is None  # the polling went on
    finally:
        reloader.stop()
