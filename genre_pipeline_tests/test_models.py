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

from genre_pipeline import tracking
from genre_pipeline.champion import registry, scoring
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.dataset.cleaning import metadata_fields
from genre_pipeline.defs import embeddings, models, predictions
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.encoders import cache
from genre_pipeline.models.encoders.cache import Embeddings
from genre_pipeline.models.encoders.text import TextEncoder
from genre_pipeline.models.movie import decision_column, example_frame, probability_column
from genre_pipeline.store import DataStore
from genre_pipeline.training import data as training_data
from genre_pipeline.training import fingerprint

from .conftest import (
    ASSETS,
    BIN,
    DATASET_ASSETS,
    FAST_TRAINING,
    MINILM,
    MODEL_ASSETS,
    best_constant_macro_f1,
    free_port,
    latest_metadata,
    run_command,
    source_environment,
    wait_for,
)


def model_report(store: DataStore, name: str) -> dict:
    return json.loads(store.model_report_file(name).read_text())


def metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


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


def test_the_stack_reports_its_members_and_what_metadata_and_posters_add(trained):
    report = json.loads(trained["store"].model_report_file("stacked_model").read_text())
    assert set(report["members"]) == {
        "tfidf",
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


def stack_frame(store: DataStore, ids) -> pd.DataFrame:
    """Movies of the data folder as the pyfunc model's raw input rows."""
    return scoring.stored_movies(store, ids).rows()


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


def test_embeddings_are_cached_and_not_recomputed(trained):
    res, instance = trained["resources"], trained["instance"]
    first_by_node = {node: latest_metadata(instance, node) for node in ("text_embeddings", "poster_embeddings")}
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


def test_the_champion_is_registered_loads_and_predicts(trained):
    decision = latest_metadata(trained["instance"], "champion_model")
    assert decision["promoted"] is True and "there was no champion" in decision["decision"]
    predictor = GenrePredictor.from_registry(trained["uri"])
    assert predictor.info["model"] in registry.CHAMPION_CANDIDATES and predictor.info["label_set"] == "full"
    comparison = pd.read_csv(trained["store"].model_comparison_file).set_index("model")
    candidates = comparison[comparison["candidate"]]
    assert predictor.info["model"] == candidates["validation_macro_f1"].idxmax()
    prediction = predictor.predict(
        "A haunted farmhouse, a demonic presence and whispers after midnight.", "Don't look behind you.", top_k=3
    )
    decided = set(prediction.genres)
    # The 3 most probable, then only decided genres; every decided genre is listed.
    assert len(prediction.scores) >= 3 and all(0 <= p <= 1 and 0 < t < 1 for _, p, t in prediction.scores)
    assert all(g in decided for g, _, _ in prediction.scores[3:]) and decided <= {g for g, _, _ in prediction.scores}
    assert all((p >= t) == (g in decided) for g, p, t in prediction.scores)
    assert prediction.scores[0][0] in ("Horror", "Thriller", "Mystery")
    with pytest.raises(ValueError, match="overview is empty"):
        predictor.predict("   ")


def test_a_worse_model_is_not_promoted_even_when_its_stored_figure_is_higher(trained):
    """text_model's report is made to claim the best validation macro-F1 of all, so it becomes the
    candidate; scored now on the same validation movies as the champion, it loses. That is an outcome,
    not a failure: the check warns, the run succeeds, champion_model says "kept" with both figures and
    removes @challenger, and the champion stays. Run again, the same run is not registered twice."""
    store, instance = trained["store"], trained["instance"]
    client = MlflowClient(trained["uri"], trained["uri"])
    champion = registry.current_champion(client)
    report_file = store.model_report_file("text_model")
    kept = {path: path.read_bytes() for path in (report_file, store.model_comparison_file)}
    report_file.write_text(json.dumps({**json.loads(kept[report_file]), "validation_macro_f1": 0.999}))
    every_asset = ASSETS + DATASET_ASSETS + MODEL_ASSETS
    versions_before = len(client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'"))
    try:
        result, again = (
            dg.materialize(
                every_asset,
                selection=[models.model_comparison, models.champion_model],
                resources=trained["resources"],
                instance=instance,
            )
            for _ in range(2)
        )
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
    decided = metadata(result, "model_comparison")
    assert decided["candidate"] == "text_model" and decided["challenger"].endswith("(text_model)")
    assert decided["challenger_validation_macro_f1"] < decided["champion_validation_macro_f1"] < 0.999
    assert decided["decision"].startswith("champion kept: validation macro-F1 on the current validation split")
    assert "candidate text_model" in decided["decision"] and f"champion v{champion['version']}" in decided["decision"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "challenger_beats_champion" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    outcome = metadata(result, "champion_model")
    assert outcome["outcome"] == f"kept v{champion['version']}" and outcome["promoted"] is False
    assert "champion kept" in outcome["decision"] and "candidate text_model" in outcome["decision"]
    assert registry.current_champion(client, registry.CHALLENGER_ALIAS) is None
    assert registry.current_champion(client)["version"] == champion["version"]
    # The same run compared with the same champion again: its verdict stands, nothing is registered.
    assert "was compared already: challenger" in metadata(again, "model_comparison")["decision"]
    assert len(client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'")) == versions_before + 1
    assert registry.current_champion(client)["version"] == champion["version"]


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


# Few, larger steps so that three epochs on ~70 demo movies learn something.
FINE_TUNE = {
    "max_epochs": 3,
    "batch_size": 16,
    "patience": 3,
    "encoder_learning_rate": 1e-4,
    "head_learning_rate": 3e-3,
}


@pytest.fixture(scope="module")
def fine_tuned(trained, tmp_path_factory):
    """Every model again, with the encoders fine-tuned on CPU, in a copy of the data folder without
    any model, embedding or MLflow store."""
    data_dir = tmp_path_factory.mktemp("fine-tuned") / "data"
    shutil.copytree(
        trained["store"].root,
        data_dir / "test",
        ignore=shutil.ignore_patterns("models", "embeddings", "mlflow.db", "mlartifacts"),
    )
    res = {**trained["resources"], "storage": StorageResource(data_dir=str(data_dir), source="test")}
    # MiniLM, not the default MPNet: fine-tuning either on CPU proves the same path, MiniLM in a fifth
    # of the time (MPNet made this fixture alone take 12 minutes of the suite).
    # PyTorch as the encoders' inference backend: these tests are about fine-tuning, and each fine-tuned
    # encoder's ONNX export would cost more than its training here (a changed encoder's export is
    # test_encoder_backends' test_the_graph_is_exported_once_per_weights).
    # No temporal evaluation (it would fine-tune every model twice): the trained fixture covers it.
    res["training"] = TrainingResource(
        device="cpu", fine_tune=True, text_encoders=[MINILM], encoder_backend="torch", temporal_test_years=0
    )
    # Posters are decoded in worker processes for fusion (as on a GPU machine), in-process for the image model.
    ops = {
        "text_model": {"fine_tuning": FINE_TUNE},
        "image_model": {"fine_tuning": {**FINE_TUNE, "num_workers": 0}},
        "fusion_model": {"fine_tuning": FINE_TUNE},
    }
    result = dg.materialize(
        ASSETS + DATASET_ASSETS + MODEL_ASSETS,
        selection=[models.baseline_model, models.text_model, models.image_model, models.fusion_model],
        resources=res,
        instance=trained["instance"],
        run_config={"ops": {name: {"config": config} for name, config in ops.items()}},
    )
    store = DataStore(data_dir / "test")
    return {"result": result, "store": store, "uri": tracking.sqlite_uri(store.mlflow_db)}


def test_fine_tuning_trains_the_encoders_and_logs_them(fine_tuned):
    store = fine_tuned["store"]
    chance = best_constant_macro_f1(store)
    mlflow.set_tracking_uri(fine_tuned["uri"])
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["genre-pipeline"], output_format="list")}
    expected = {"baseline_model": "", "text_model": "text", "image_model": "image", "fusion_model": "text,image"}
    assert {name: runs[name].data.params["fine_tuned_encoders"] for name in expected} == expected
    text = json.loads((store.models_dir / "text_model" / "report.json").read_text())
    assert text["test"]["macro_f1"] > chance + 0.1, (text["test"]["macro_f1"], chance)
    for name in ("text_model", "image_model", "fusion_model"):
        # Three epochs on ~70 movies: enough for the text model to learn, and for every model to fit.
        history = pd.read_csv(store.models_dir / name / "history.csv")
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0], name
    # The fine-tuned encoders travel inside the pyfunc model; frozen ones are referenced by name.
    fusion = Path(mlflow.artifacts.download_artifacts(model_report(store, "fusion_model")["model_uri"]))
    assert {p.name for p in (fusion / "artifacts" / "classifier" / "encoders").iterdir()} == {
        "text_encoder",
        "image_encoder.pt",
    }
    baseline = Path(mlflow.artifacts.download_artifacts(model_report(store, "baseline_model")["model_uri"]))
    assert not (baseline / "artifacts" / "classifier" / "encoders").exists()
    # The saved text encoder is not the bundled one: fine-tuning moved its weights.
    text = Path(mlflow.artifacts.download_artifacts(model_report(store, "text_model")["model_uri"]))
    saved = TextEncoder(str(text / "artifacts" / "classifier" / "encoders" / "text_encoder"), backend="torch")
    bundled = TextEncoder(MINILM, backend="torch")
    sentence = ["A lonely robot crosses a desert to find its maker."]
    assert not np.allclose(saved.encode(sentence), bundled.encode(sentence), atol=1e-4)


def test_the_fine_tuned_models_predict_what_their_evaluation_measured(fine_tuned):
    """The pyfunc models run the saved fine-tuned encoders: their probabilities for test movies are the
    ones the test reports were computed from."""
    store = fine_tuned["store"]
    mlflow.set_tracking_uri(fine_tuned["uri"])
    for name in ("text_model", "fusion_model"):
        report = json.loads(store.model_report_file(name).read_text())
        model = mlflow.pyfunc.load_model(report["model_uri"])
        samples = pd.read_csv(store.model_dir(name) / "sample_predictions.csv")
        output = model.predict(stack_frame(store, samples["id"]))
        for (_, row), sample in zip(output.iterrows(), samples["top_3"]):
            for part in sample.split(", "):
                genre, probability = part.rsplit(" ", 1)
                assert row[probability_column(genre)] == pytest.approx(float(probability), abs=0.006), name


def test_genre_predictions_label_the_movies_tmdb_gives_no_genre(trained):
    store, instance = trained["store"], trained["instance"]
    every_asset = ASSETS + DATASET_ASSETS + MODEL_ASSETS + [predictions.genre_predictions]
    result = dg.materialize(
        every_asset, selection=[predictions.genre_predictions], resources=trained["resources"], instance=instance
    )
    table = pd.read_parquet(store.genre_predictions_file)
    details = store.read_details()
    no_genre = {i for i, m in details.items() if not m.get("genres") and m.get("overview", "").strip()}
    assert no_genre and set(table.loc[table["scored_as"] == "unlabelled", "id"]) == no_genre
    splits = pd.read_parquet(store.splits_file)
    test_ids = set(splits.loc[splits["split"] == "test", "id"])
    checks = table[table["scored_as"] == "labelled_check"]
    assert set(checks["id"]) <= test_ids and len(checks) == min(200, len(test_ids))
    assert all(details[i]["genres"] for i in checks["id"])

    predictor = GenrePredictor.from_registry(trained["uri"])
    assert set(table["champion_version"]) == {predictor.info["version"]}
    assert set(table["champion_run_id"]) == {predictor.info["run_id"]}
    probabilities = table[[probability_column(g) for g in predictor.classes]].to_numpy()
    decided = [  # most probable first
        [g for g, p, t in sorted(zip(predictor.classes, row, predictor.thresholds), key=lambda s: -s[1]) if p >= t]
        for row in probabilities
    ]
    assert [list(g) for g in table["predicted_genres"]] == decided
    # The table holds what the champion answers for these movies.
    movie = details[next(iter(no_genre))]
    (served,) = predictor.predict_rows(
        [
            {"overview": movie["overview"], "tagline": movie.get("tagline"), "title": movie.get("title")}
            | metadata_fields(movie)
            | {"poster": poster_of(store, movie["id"])}
        ]
    )
    assert served.genres == decided[list(table["id"]).index(movie["id"])]
    meta = metadata(result, "genre_predictions")
    assert meta["unlabelled_movies"] == len(no_genre) and 0 <= meta["check_macro_f1"] <= 1

    # Same champion, same movies: champion_model's data version holds and nothing downstream reruns.
    defs = dg.Definitions(assets=every_asset, resources=trained["resources"])
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    again = dg.materialize(
        every_asset, selection=[models.champion_model], resources=trained["resources"], instance=instance
    )
    version = again.get_asset_materialization_events()[0].materialization.tags["dagster/data_version"]
    assert version == f"champion-v{predictor.info['version']}-{predictor.info['run_id']}"
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert dg.AssetKey("genre_predictions") not in {r.key for r in tick.results if r.true_subset.size}


def poster_of(store: DataStore, movie_id: int) -> bytes | None:
    status = poster_files.read_statuses(store).set_index("id")
    if movie_id not in status.index or status.loc[movie_id, "status"] != "ok":
        return None
    return (store.root / status.loc[movie_id, "file"]).read_bytes()


def test_a_rerun_with_nothing_changed_retrains_nothing_and_registers_nothing(trained):
    """The same `dagster asset materialize --select '*'` again: every model is reused (same MLflow run,
    same data version, no new run), the champion is kept and no version is registered."""
    client = MlflowClient(trained["uri"], trained["uri"])
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs_before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    versions_before = len(client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'"))
    champion = registry.current_champion(client)
    # From the data folder's reports: the fine-tuning fixture materializes the same assets in this instance.
    before = {name: model_report(trained["store"], name)["run_id"] for name in models.MODEL_ASSETS}
    env = source_environment(trained["home"], trained["data_dir"], trained["demo_dir"])
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions", "--select", "*"]
    run_command(
        materialize + ["--partition-range", trained["years"], "--config-json", json.dumps(FAST_TRAINING)],
        env,
        timeout=900,
    )
    for name in models.MODEL_ASSETS:
        after = latest_metadata(trained["instance"], name)
        assert after["reused"] == f"unchanged inputs: MLflow run {before[name]}", name
        event = trained["instance"].get_latest_materialization_event(dg.AssetKey(name))
        assert event.asset_materialization.tags["dagster/data_version"] == before[name]
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == runs_before
    assert len(client.search_model_versions(f"name='{registry.REGISTERED_MODEL}'")) == versions_before
    assert registry.current_champion(client)["version"] == champion["version"]
    assert latest_metadata(trained["instance"], "champion_model")["outcome"] == f"kept v{champion['version']}"


def test_each_models_code_fingerprint_covers_only_the_code_that_trains_it():
    closures = {name: {p.name for p in fingerprint.module_closure(root)} for name, root in fingerprint.TRAINERS.items()}
    for name, files in closures.items():
        # Promotion, the registry, scoring and serving are not training code: editing them retrains nothing.
        assert not files & {"promotion.py", "registry.py", "scoring.py", "predictor.py", "app.py"}, name
        assert {"members.py", "evaluation.py", "metrics.py"} <= files, name
    assert [name for name, files in closures.items() if "stack.py" in files] == ["stacked_model"]
