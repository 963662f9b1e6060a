"""The model assets with the bundled encoders on the demo catalog: training, MLflow, the champion."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from genre_pipeline.defs import embeddings, models
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.models.encoders import cache
from genre_pipeline.models.encoders.cache import Embeddings
from genre_pipeline.models.movie import decision_column, example_frame, probability_column
from genre_pipeline.models.thresholds import THRESHOLD_RULES, rule_thresholds
from genre_pipeline.training import data as training_data
from genre_pipeline.training.config import FUSION_KINDS

from .conftest import (
    ASSETS,
    BIN,
    DATASET_ASSETS,
    MINILM,
    MODEL_ASSETS,
    best_constant_macro_f1,
    first_metadata,
    free_port,
    latest_metadata,
    metadata,
    model_report,
    stack_frame,
    wait_for,
)

"""The model assets with the bundled encoders on the demo catalog: training, MLflow, the champion."""


def test_every_model_beats_chance_on_the_test_split(trained):
    chance = best_constant_macro_f1(trained["store"])
    comparison = pd.read_csv(trained["store"].model_comparison_file).set_index("model")
    assert set(comparison.index) == set(models.MODEL_ASSETS)
    for model in comparison.index:
        assert comparison.at[model, "macro_f1"] > chance + 0.1, (model, comparison.at[model, "macro_f1"], chance)
    fusion = latest_metadata(trained["instance"], "fusion_model")
    assert fusion["test_with_poster_macro_f1"] > chance


def test_reported_metrics_come_from_one_set_of_predictions(trained):
    report = json.loads((trained["store"].models_dir / "text_model" / "report.json").read_text())
    per_genre = pd.read_csv(trained["store"].models_dir / "text_model" / "per_genre.csv")
    assert report["test"]["macro_f1"] == pytest.approx(per_genre["f1"].mean())
    tp, fp, fn = (
        per_genre["true_positives"].sum(),
        per_genre["false_positives"].sum(),
        per_genre["false_negatives"].sum(),
    )
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert report["test"]["micro_precision"] == pytest.approx(precision)
    assert report["test"]["micro_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    test_ids = set(pd.read_parquet(trained["store"].splits_file).query("split == 'test'")["id"])
    assert report["n_test"] == len(test_ids)
    assert set(json.loads((trained["store"].models_dir / "text_model" / "train_ids.json").read_text())).isdisjoint(
        test_ids
    )


def test_each_models_thresholds_follow_the_rule_that_held_up_on_validation_movies_it_was_not_tuned_on(trained):
    store = trained["store"]
    labels = pd.read_parquet(store.labels_file("full")).set_index("id")
    for model in models.MODEL_ASSETS:
        report = json.loads(store.model_report_file(model).read_text())
        held_out = {rule: report[f"threshold_rule_held_out_macro_f1_{rule}"] for rule in THRESHOLD_RULES}
        assert report["threshold_rule"] == max(held_out, key=held_out.get), (model, held_out)
        with np.load(store.model_dir(model) / "probabilities.npz") as saved:
            ids, probabilities = saved["validation_ids"], saved["validation_probabilities"]
        classes = report["classes"]
        tuned = rule_thresholds(report["threshold_rule"], probabilities, labels.loc[ids, classes].to_numpy())
        assert [report["thresholds"][genre] for genre in classes] == pytest.approx(tuned.tolist()), model


def test_the_stack_reports_its_members_and_what_metadata_and_posters_add(trained):
    report = json.loads(trained["store"].model_report_file("stacked_model").read_text())
    assert set(report["members"]) == {
        "tfidf_title",
        f"text[{MINILM}]",
        f"neighbours[{MINILM}]",
        f"linear[{MINILM}]",
        "poster[efficientnet-lite0]",
    }
    chance = best_constant_macro_f1(trained["store"])
    for figure in ("test_macro_f1_without_metadata", "test_macro_f1_without_posters"):
        assert chance < report[figure] <= 1, figure
    assert report["members"]["poster[efficientnet-lite0]"]["test_movies"] < report["n_test"]
    assert report["model_uri"] is not None and report["metadata"] is True


def test_the_stack_loads_in_a_fresh_process_and_reproduces_its_reported_probabilities(trained, tmp_path):
    store = trained["store"]
    report = json.loads(store.model_report_file("stacked_model").read_text())
    with np.load(store.model_dir("stacked_model") / "probabilities.npz") as saved:
        ids, reported = saved["test_ids"][:40], saved["test_probabilities"][:40]
    stack_frame(store, ids).to_pickle(tmp_path / "input.pkl")
    mlflow.set_tracking_uri(trained["uri"])
    mlflow.set_registry_uri(trained["uri"])
    version = mlflow.register_model(report["model_uri"], "stack-under-test")
    script = (
        "import sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
        "model = mlflow.pyfunc.load_model(sys.argv[2]); "
        "model.predict(pd.read_pickle(sys.argv[3])).to_pickle(sys.argv[4])"
    )
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            trained["uri"],
            f"models:/stack-under-test/{version.version}",
            tmp_path / "input.pkl",
            tmp_path / "output.pkl",
        ],
        timeout=600,
        capture_output=True,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    output = pd.read_pickle(tmp_path / "output.pkl")
    classes = report["classes"]
    probabilities = output[[probability_column(g) for g in classes]].to_numpy()
    np.testing.assert_allclose(probabilities, reported, atol=1e-4)
    thresholds = np.array([report["thresholds"][g] for g in classes])
    assert (output[[decision_column(g) for g in classes]].to_numpy() == (probabilities >= thresholds)).all()


def load_stack(trained):
    mlflow.set_tracking_uri(trained["uri"])
    report = json.loads(trained["store"].model_report_file("stacked_model").read_text())
    return mlflow.pyfunc.load_model(report["model_uri"]), report["classes"]


def test_the_stack_predicts_without_metadata_and_without_a_usable_poster(trained, demo_dir):
    model, classes = load_stack(trained)
    columns = [probability_column(g) for g in classes]
    poster = next((demo_dir / "posters").iterdir()).read_bytes()
    base = {"overview": "A haunted farmhouse, a demonic presence and whispers after midnight.", "tagline": "Run."}
    rows = pd.DataFrame(
        [
            {**base, "poster": poster, "original_language": "en", "runtime": 95.0, "release_year": 2019},
            {**base, "poster": poster},  # no metadata at all
            {**base, "poster": poster[: len(poster) // 3]},  # truncated image
            {**base, "poster": b"not an image"},
        ]
    )
    output = model.predict(rows)
    assert output[columns].notna().all().all() and ((output[columns] >= 0) & (output[columns] <= 1)).all().all()
    assert output["used_poster"].tolist() == [True, True, False, False]
    assert output["poster_note"].iloc[0] == "" and "not usable" in output["poster_note"].iloc[3]
    without_poster = model.predict(pd.DataFrame([base]))
    assert without_poster["used_poster"].tolist() == [False]


def test_the_stack_refuses_an_empty_overview_and_bad_metadata(trained):
    model, _ = load_stack(trained)
    with pytest.raises(Exception, match="row 1: the overview is empty"):
        model.predict(pd.DataFrame({"overview": ["A heist in Rome.", "   "]}))
    with pytest.raises(Exception, match="'runtime' must be a number"):
        model.predict(pd.DataFrame({"overview": ["A heist in Rome."], "runtime": ["long"]}))


def test_mlflow_models_serve_answers_over_http(trained, demo_dir):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": trained["uri"],
        "MLFLOW_REGISTRY_URI": trained["uri"],
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the scoring server runs uvicorn from here
    }
    server = subprocess.Popen(
        [
            BIN / "mlflow",
            "models",
            "serve",
            "-m",
            "models:/genre-classifier@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server)
        poster = base64.b64encode(next((demo_dir / "posters").iterdir()).read_bytes()).decode()
        body = {
            "dataframe_split": {
                "columns": ["overview", "tagline", "poster", "runtime"],
                "data": [
                    [
                        "Two rival chefs fall in love during a summer in Provence.",
                        "Love is the secret ingredient.",
                        poster,
                        101.0,
                    ],
                    ["A space marine fights alien hordes on a mining colony.", None, poster, None],
                ],
            }
        }
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text[:500]
        predictions = answer.json()["predictions"]
        assert len(predictions) == 2
        genres = json.loads(trained["store"].label_sets_file.read_text())["full"]
        for row in predictions:
            assert all(0 <= row[probability_column(g)] <= 1 for g in genres)
            assert all(isinstance(row[decision_column(g)], bool) for g in genres)
        empty = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["overview"], "data": [[""]]}},
            timeout=120,
        )
        assert empty.status_code >= 400 and "row 0: the overview is empty" in empty.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_logged_model_carries_its_signature_and_an_example_mlflow_predicts_with(trained, tmp_path):
    """What `mlflow models serve`, `mlflow.models.predict` and the registry UI read: the movie's fields in,
    a probability and a decision per genre out, and a serving example that runs."""
    mlflow.set_tracking_uri(trained["uri"])
    genres = json.loads(trained["store"].label_sets_file.read_text())["full"]
    logged = {name: model_report(trained["store"], name)["model_uri"] for name in models.MODEL_ASSETS}
    assert logged.pop("image_model") is None  # measured, never deployed
    for name, uri in logged.items():
        info = mlflow.models.get_model_info(uri)
        inputs = info.signature.inputs.input_names()
        assert inputs[0] == "overview" and {"tagline", "title", "poster", "runtime"} <= set(inputs), name
        assert [probability_column(g) for g in genres] <= info.signature.outputs.input_names(), name
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / name)))
        out = tmp_path / f"{name}.json"
        mlflow.models.predict(
            uri, input_path=str(local / "serving_input_example.json"), env_manager="local", output_path=str(out)
        )
        (row,) = json.loads(out.read_text())["predictions"]
        assert all(0 <= row[probability_column(g)] <= 1 for g in genres), name
        assert all(isinstance(row[decision_column(g)], bool) for g in genres), name


def test_embeddings_are_cached_and_not_recomputed(trained):
    res, instance = trained["resources"], trained["instance"]
    # The whole-graph run's: other tests may have materialized them since (reusing every vector).
    first_by_node = {node: first_metadata(instance, node) for node in ("text_embeddings", "poster_embeddings")}
    again = dg.materialize(
        ASSETS + DATASET_ASSETS + MODEL_ASSETS, selection=MODEL_ASSETS[:2], resources=res, instance=instance
    )
    for node in ("text_embeddings", "poster_embeddings"):
        second = metadata(again, node)
        first = first_by_node[node]
        assert first["computed"] > 0 and second["computed"] == 0 and second["reused"] == first["computed"]


def test_embeddings_in_shards_match_one_step_and_a_retried_shard_reuses_its_file(trained, tmp_path):
    """Each shard encodes its own share of the movies the cache lacks; merged, the file is the one a
    single step makes, bit for bit, and no shard file is left behind."""
    files = {}
    for shards in (1, 3):
        data_dir = tmp_path / f"shards-{shards}"
        shutil.copytree(trained["store"].root, data_dir / "test", ignore=shutil.ignore_patterns("embeddings", "ml*"))
        res = {**trained["resources"], "storage": StorageResource(data_dir=str(data_dir), source="test")}
        asset = embeddings.sharded_embedding_asset("text_embeddings", "text", embeddings.text_work, "", shards=shards)
        figures = metadata(dg.materialize([asset], resources=res), "text_embeddings")
        store = res["storage"].store
        movies = len(store.read_table(store.movies_clean_file))
        assert figures["computed"] == figures["embedded"] == movies and figures["reused"] == 0
        assert figures["shards"].count(f"{MINILM} |") == shards  # a row per shard in the table
        files[shards] = store.embeddings_file("text", MINILM, figures["backend"])
        assert sorted(p.name for p in files[shards].parent.iterdir()) == [files[shards].name]
    one, three = (Embeddings.load(files[n]) for n in (1, 3))
    assert one.ids.tolist() == three.ids.tolist() and one.keys.tolist() == three.keys.tolist()
    np.testing.assert_array_equal(three.vectors, one.vectors)  # the encoder's output does not hang on its batch

    # A shard killed after writing its file: run again, it encodes nothing more.
    shutil.rmtree(files[1].parent)
    work = embeddings.text_work(res["storage"], trained["resources"]["training"], 16)[0]
    again = [
        cache.refresh_shard(
            files[1],
            work.ref,
            shard=1,
            shards=3,
            worker="test",
            device="cpu",
            batch_size=16,
            ids=work.ids,
            keys=work.keys,
            inputs=work.inputs,
        )
        for _ in range(2)
    ]
    assert again[0]["computed"] > 0 and again[1]["computed"] == 0 and again[1]["reused"] == again[0]["computed"]


def test_mlflow_holds_each_run_with_params_metrics_artifacts_and_model(trained):
    mlflow.set_tracking_uri(trained["uri"])
    runs = mlflow.search_runs(experiment_names=["genre-pipeline"], output_format="list")
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == set(models.MODEL_ASSETS)
    text = by_name["text_model"]
    assert text.data.params["label_set"] == "full" and text.data.params["text_encoders"] == json.dumps([MINILM])
    assert "data_fingerprint" in text.data.params and "code_version" in text.data.params
    assert {
        "test_macro_f1",
        "test_micro_f1",
        "test_top3_rule_macro_f1",
        "validation_macro_f1",
        "epoch_validation_macro_f1",
    } <= text.data.metrics.keys()
    history = MlflowClient().get_metric_history(text.info.run_id, "epoch_validation_macro_f1")
    assert len(history) >= 2 and [m.step for m in history] == list(range(1, len(history) + 1))
    artifacts = {a.path for a in MlflowClient().list_artifacts(text.info.run_id, "report")}
    assert {"report/report.json", "report/roc_curves.png", "report/confusion_matrices.png"} <= artifacts
    report = json.loads((trained["store"].models_dir / "text_model" / "report.json").read_text())
    model = mlflow.pyfunc.load_model(report["model_uri"])
    genres = json.loads(trained["store"].label_sets_file.read_text())["full"]
    output = model.predict(example_frame())
    assert [c for c in output.columns if c.startswith("probability:")] == [probability_column(g) for g in genres]
    # The poster-only model cannot predict without a poster: measured, never deployed.
    assert json.loads(trained["store"].model_report_file("image_model").read_text())["model_uri"] is None


def test_each_model_reports_what_to_expect_on_the_newest_years(trained):
    """Beside the random test split, each model is trained on the movies released before the newest two
    years and scored on those years: a temporal split no recent movie trains in. The demo's newest years
    have (almost) no posters, as the real snapshot's: the poster model reports why it has no temporal
    figure, and the run goes on."""
    store = trained["store"]
    data, _ = training_data.load(store, "full", [], [])
    split = training_data.temporal_split(data, 2, min_movies=10)
    recent = data.metadata["release_year"].to_numpy() >= 2023
    assert split.years == "2023-2024" and (split.data.split[recent] == "test").all()
    assert set(split.data.split[~recent]) <= {"train", "validation", "unused"}
    assert (split.data.split[~recent & (data.split == "test")] == "unused").all()
    assert data.has_poster[recent].sum() < 10
    comparison = pd.read_csv(store.model_comparison_file).set_index("model")
    for name in models.MODEL_ASSETS:
        report = json.loads(store.model_report_file(name).read_text())
        assert report["temporal_test_years"] == "2023-2024", name
        if report["kind"] == "image":
            with_poster = int((recent & data.has_poster).sum())
            assert report["temporal_test_not_measured"] == (
                f"not measured: {with_poster} labelled movies with a poster of 2023-2024, fewer than 10"
            )
            assert "temporal_test_macro_f1" not in report and pd.isna(comparison.loc[name, "temporal_macro_f1"])
            continue
        assert report["temporal_test_movies"] == int(recent.sum()), name
        assert 0 <= report["temporal_test_macro_f1"] <= 1
        assert comparison.loc[name, "temporal_macro_f1"] == pytest.approx(report["temporal_test_macro_f1"])
    image = latest_metadata(trained["instance"], "image_model")
    assert image["temporal_test_not_measured"].startswith("not measured: ")


def test_the_temporal_evaluation_repeats_the_kept_recipe_without_the_diagnostics(trained):
    """The temporal figure retrains what the model settled on: the fusion head it kept (not both again),
    and the stack without its diagnostic variant (no metadata) and member figures."""
    instance = trained["instance"]

    def step_messages(asset: str) -> list[str]:
        (record,) = instance.fetch_materializations(dg.AssetKey(asset), limit=1, ascending=True).records
        return [entry.user_message for entry in instance.all_logs(record.run_id) if entry.step_key == asset]

    fusion = step_messages("fusion_model")
    kept = json.loads(trained["store"].model_report_file("fusion_model").read_text())["kind"]
    (other,) = set(FUSION_KINDS) - {kept}
    assert sum(f"{kept} epoch 1:" in m for m in fusion) == 2
    assert sum(f"{other} epoch 1:" in m for m in fusion) == 1
    stack = step_messages("stacked_model")
    assert sum(m.startswith("member tfidf_title: cross-fitted") for m in stack) == 2
    assert sum(m.startswith("member tfidf_title: cross-fitted") and "validation macro-F1" in m for m in stack) == 1
    assert sum(m.startswith("stacker: fitted") for m in stack) == 2


def test_an_unloadable_encoder_fails_clearly(trained):
    res = {**trained["resources"], "training": TrainingResource(text_encoders=["/nonexistent/encoder"])}
    result = dg.materialize(
        ASSETS + DATASET_ASSETS + MODEL_ASSETS,
        selection=[models.text_embeddings],
        resources=res,
        instance=trained["instance"],
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "cannot load the pretrained text encoder" in failure.event_specific_data.error.message
    assert not np.any([e.event_type_value == "STEP_RESTARTED" for e in result.all_events])
