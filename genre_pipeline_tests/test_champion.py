"""The champion's lifecycle on the session's models: registration, promotion only of a better model, the
batch predictions, idempotent reruns and per-model code fingerprints."""

import hashlib
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from genre_pipeline import tracking
from genre_pipeline.champion import registry, scoring
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.dataset.cleaning import metadata_fields
from genre_pipeline.defs import models, predictions
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.movie import probability_column
from genre_pipeline.store import DataStore
from genre_pipeline.training import fingerprint, manifest

from .conftest import (
    ASSETS,
    BIN,
    DATASET_ASSETS,
    FAST_TRAINING,
    MODEL_ASSETS,
    latest_metadata,
    metadata,
    model_report,
    run_command,
    source_environment,
    stack_frame,
)


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


def test_every_caller_reads_the_models_own_classes_thresholds_and_decisions(trained):
    """The logged model's metadata carries its classes, thresholds and inputs (those of the classifier in
    its folder), and the decisions the model answers are the ones its thresholds make."""
    stack = GenrePredictor.from_registry(trained["stack_uri"])
    logged = stack.model.metadata.metadata
    classifier = stack.model.unwrap_python_model().classifier  # here only, to compare with the metadata
    assert logged["classes"] == classifier.classes == stack.classes
    assert np.allclose(logged["thresholds"], classifier.thresholds)
    assert np.allclose(stack.thresholds, classifier.thresholds)
    assert set(logged["reads"]) == {"text", "title", "metadata", "poster"}
    test_ids = trained_test_ids(trained["store"])
    output = stack.predict_frame(stack_frame(trained["store"], test_ids))
    assert output.probabilities.shape == output.decisions.shape == (len(test_ids), len(stack.classes))
    assert (output.decisions == (output.probabilities >= stack.thresholds)).all()


def test_scoring_takes_the_embedding_assets_vectors_of_unchanged_texts_and_posters(trained):
    """Scoring the stored movies through the logged model gives the same answer whether its encoders
    encode every text and poster or take the cached vectors of the same content; a changed overview is
    encoded again."""
    store, stack = trained["store"], GenrePredictor.from_registry(trained["stack_uri"])
    reusing = scoring.reusing_store_embeddings(
        GenrePredictor.from_registry(trained["stack_uri"]), scoring.store_embeddings(store)
    )
    frame = stack_frame(store, trained_test_ids(store))
    frame.loc[0, "overview"] = "A lighthouse keeper finds a message in a bottle that was written tomorrow."
    expected, got = stack.predict_frame(frame), reusing.predict_frame(frame)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    assert (got.decisions == expected.decisions).all() and (got.used_poster == expected.used_poster).all()
    model = reusing.model.unwrap_python_model()  # here only, to count what its encoders took from the cache
    by_modality = {ref.modality: model.encoders[ref.key] for ref in model.classifier.encoders}
    assert by_modality["text"].reused == len(frame) - 1  # all but the changed overview
    assert by_modality["image"].reused == int(got.used_poster.sum()) > 0


def trained_test_ids(store) -> list[int]:
    splits = store.read_table(store.splits_file)
    return splits.loc[splits["split"] == "test", "id"].tolist()


def test_a_worse_model_is_not_promoted_even_when_its_stored_figure_is_higher(trained):
    """text_model's report is made to claim the best validation macro-F1 of all, so it becomes the
    candidate; scored now on the same validation movies as the champion, it loses. That is an outcome,
    not a failure: the check warns, the run succeeds, champion_model says "kept" with both figures and
    removes @challenger, and the champion stays. Run again, the same run is not registered twice."""
    store, instance = trained["store"], trained["instance"]
    client = MlflowClient(trained["uri"], trained["uri"])
    champion = registry.current_champion(client)
    report_file = store.model_report_file("text_model")
    manifest_file = report_file.with_name(manifest.MANIFEST_FILE)
    kept = {path: path.read_bytes() for path in (report_file, manifest_file, store.model_comparison_file)}
    report_file.write_text(json.dumps({**json.loads(kept[report_file]), "validation_macro_f1": 0.999}))
    # As if its training had written that figure: the folder's manifest says so too (else it is not whole).
    recorded = json.loads(kept[manifest_file])
    recorded["report"]["report.json"] = hashlib.sha256(report_file.read_bytes()).hexdigest()
    manifest_file.write_text(json.dumps(recorded))
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
        packages = {p.parent.name for p in fingerprint.module_closure(fingerprint.TRAINERS[name])}
        assert not packages & {"champion", "monitoring", "serving", "defs"}, name
        assert {"members.py", "evaluation.py", "metrics.py"} <= files, name
    assert [name for name, files in closures.items() if "stack.py" in files] == ["stacked_model"]
