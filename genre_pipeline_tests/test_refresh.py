"""The refresh loop on a demo catalog moved in time: built as it stood at the end of 2023, then refreshed
through the refresh schedule's run and the runs declarative automation requests (genre_pipeline.refresh),
as the daemon would, at mid-2024, again with nothing new, and at the end of 2024 with retraining made to
pay. The champion is scored on the new movies before anything trains on them, never on one it saw."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient

from genre_pipeline import refresh, settings, tracking
from genre_pipeline.champion import registry
from genre_pipeline.champion.seen import training_movies
from genre_pipeline.defs import dataset, embeddings, ingestion, models, monitoring, predictions
from genre_pipeline.defs.resources import MonitoringResource, RetrainingConfig, TrainingResource
from genre_pipeline.defs.schedules import damaged_files_sensor, tmdb_refresh_schedule
from genre_pipeline.refresh import run_refresh
from genre_pipeline.store import DataStore
from genre_pipeline.tmdb import demo_catalog

from .conftest import FAST_TRAINING, MINILM, materialize_all, pipeline_resources

# Large enough, and a seed with which the genres kept stay the same from the end of 2023 to the end of
# 2024 (with other seeds a genre crosses the label threshold in 2024, and the older movies it labels are
# new to the champion too), small enough to train in about a minute.
CATALOG_MOVIES, CATALOG_SEED = 200, 8
MODULES = [ingestion, dataset, embeddings, monitoring, models, predictions]
MODEL_ASSETS = {"baseline_model", "text_model", "image_model", "fusion_model", "stacked_model"}
# What the refresh loop does is under test here, not how well the models learn: lighter training than
# FAST_TRAINING's (a 2-fold, 1-bag stack, shorter head training) for the two trainings of every model.
LOOP_HEADS = {"max_epochs": 10, "patience": 3}
LOOP_OPS = {
    "ops": {
        **{name: {"config": LOOP_HEADS} for name in ("text_model", "image_model", "fusion_model")},
        "stacked_model": {"config": {"folds": 2, "stacker_bags": 1, "heads": LOOP_HEADS}},
    }
}


def definitions(catalog, data_dir, as_of: str, **monitoring_options) -> dg.Definitions:
    resources = pipeline_resources(catalog, data_dir, source="moved", catalog_date=as_of)
    # No temporal evaluation here (it trains every model twice): test_models covers it.
    resources["training"] = TrainingResource(text_encoders=[MINILM], temporal_test_years=0)
    resources["monitoring"] = MonitoringResource(**monitoring_options)
    return dg.Definitions(
        assets=dg.load_assets_from_modules(MODULES),
        asset_checks=dg.load_asset_checks_from_modules(MODULES),
        schedules=[tmdb_refresh_schedule],
        sensors=[damaged_files_sensor],
        resources=resources,
    )


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    root = tmp_path_factory.mktemp("moved")
    catalog = demo_catalog.generate(root / "catalog", n_movies=CATALOG_MOVIES, seed=CATALOG_SEED)
    (root / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(root / "dagster_home"))
    data_dir = root / "data"
    state = {"catalog": catalog, "data_dir": data_dir, "instance": instance, "cycles": {}}
    with pytest.MonkeyPatch.context() as patch:  # the schedule reads the catalog date from the environment
        patch.setenv(settings.CATALOG_DATE_ENV, "2023-12-31")
        built = definitions(catalog, data_dir, "2023-12-31")
        materialize_all(built.resources, instance)
        everything = dg.materialize(
            [*built.assets, *built.asset_checks],
            selection=dg.AssetSelection.all() - dg.AssetSelection.groups("ingestion"),
            resources=built.resources,
            instance=instance,
            run_config={**FAST_TRAINING, **LOOP_OPS},
        )
        assert everything.success
        state["store"] = DataStore(data_dir / "moved")
        state["first_champion"] = champion_of(state["store"])
        for name, as_of, options in [
            ("mid_2024", "2024-06-30", {}),
            ("nothing_new", "2024-06-30", {}),
            ("end_2024", "2024-12-31", {"retraining": RetrainingConfig(min_new_labelled=5)}),
        ]:
            patch.setenv(settings.CATALOG_DATE_ENV, as_of)
            defs = definitions(catalog, data_dir, as_of, **options)
            scheduled = dt.datetime(2026, 11, 30, 4, tzinfo=dt.timezone.utc)  # the wall clock: not used
            cycle = run_refresh(defs, instance, scheduled, run_config=LOOP_OPS)
            state["cycles"][name] = {
                "cycle": cycle,
                "prequential": state["store"].read_json(state["store"].prequential_file),
                "champion": champion_of(state["store"]),
            }
    return state


def champion_of(store: DataStore) -> dict:
    uri = tracking.sqlite_uri(store.mlflow_db)
    return registry.current_champion(MlflowClient(uri, uri))


def training_ids(store: DataStore, run_id: str) -> set[int]:
    tracking.use_store(tracking.sqlite_uri(store.mlflow_db))
    return training_movies(run_id).ids


def released_between(store: DataStore, after: str, until: str) -> set[int]:
    """The labelled movies of the data folder released in (after, until]."""
    labelled = set(pd.read_parquet(store.labels_file("full"))["id"])
    return {i for i, m in store.read_details().items() if after < m["release_date"] <= until and i in labelled}


def test_the_champion_is_scored_on_the_new_movies_and_never_on_one_it_saw(moved):
    store, mid = moved["store"], moved["cycles"]["mid_2024"]
    champion = moved["first_champion"]
    new = set(mid["prequential"]["new_ids"])
    assert new == released_between(store, "2023-12-31", "2024-06-30") and new
    assert not new & training_ids(store, champion["run_id"])
    assert mid["prequential"]["score"]["movies"] == len(new)
    low, high = mid["prequential"]["score"]["macro_f1_low"], mid["prequential"]["score"]["macro_f1_high"]
    assert 0 <= low <= high <= 1
    # Six drift figures, shown but not judged on so few movies.
    assert {f["name"] for f in mid["prequential"]["drift"]} == {
        "genre_rate_shift",
        "text_length_ks",
        "language_shift",
        "poster_availability_shift",
        "embedding_domain_auc",
        "predicted_rate_shift",
    }
    assert not any(f["judged"] for f in mid["prequential"]["drift"])
    # Logged to MLflow against the champion's version, one run per refresh that scored it.
    uri = tracking.sqlite_uri(store.mlflow_db)
    client = MlflowClient(uri, uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT + "-monitoring").experiment_id],
        filter_string=f"tags.model_version = '{champion['version']}'",
    )
    assert len(new) in {run.data.metrics["prequential_movies"] for run in runs}


def test_a_few_new_movies_refresh_the_data_and_retrain_nothing(moved):
    cycle = moved["cycles"]["mid_2024"]["cycle"]
    materialized = cycle.materialized()
    assert {"raw_discover_pages", "movie_details", "posters", "movies_clean", "text_embeddings"} <= materialized
    assert {"champion_on_new_movies", "retraining_decision"} <= materialized
    assert not materialized & MODEL_ASSETS and "model_comparison" not in materialized
    assert all(run.success for run in cycle.runs)
    assert moved["cycles"]["mid_2024"]["champion"]["version"] == moved["first_champion"]["version"]


def test_a_refresh_that_brings_nothing_reruns_nothing_downstream(moved):
    cycle = moved["cycles"]["nothing_new"]["cycle"]
    assert [run.assets for run in cycle.runs] == [["movie_details", "raw_discover_pages"]]


def test_when_retraining_pays_the_models_retrain_after_the_champion_was_scored(moved):
    end = moved["cycles"]["end_2024"]
    cycle, store = end["cycle"], moved["store"]
    assert MODEL_ASSETS | {"model_comparison", "champion_model"} <= cycle.materialized()
    ran_in = {asset: n for n, run in enumerate(cycle.runs) for asset in run.assets}
    assert ran_in["champion_on_new_movies"] < ran_in["retraining_decision"] < ran_in["stacked_model"]
    # The serving champion was scored on every movie released after its data was fixed.
    assert set(end["prequential"]["new_ids"]) == released_between(store, "2023-12-31", "2024-12-31")
    # The decision names both models, both figures and the data; the champion moved only if it won.
    instance = moved["instance"]
    decided = instance.get_latest_materialization_event(dg.AssetKey("champion_model")).asset_materialization
    text = decided.metadata["decision"].value
    assert "validation macro-F1 on the current validation split" in text and "champion v1" in text
    if decided.metadata["promoted"].value:
        tags = end["champion"]["tags"]
        assert float(tags["promotion.candidate_f1"]) >= float(tags["promotion.champion_f1"])
        assert end["champion"]["version"] != moved["first_champion"]["version"]
        # The new champion trained on the movies the old one was scored on.
        assert set(end["prequential"]["new_ids"]) <= training_ids(store, end["champion"]["run_id"])
    else:
        assert end["champion"]["version"] == moved["first_champion"]["version"]


def test_a_refresh_finishes_what_a_killed_one_left_and_marks_its_run_failed(moved, monkeypatch):
    """A refresh killed mid-run leaves its run "started" (its process is gone) and its assets pending:
    the next one marks the run failed, so that its assets are not in progress forever, and materializes
    them first. What it reads is the instance and the pending list a killed refresh leaves."""
    instance = moved["instance"]
    abandoned = dg.DagsterRun(
        job_name="__ephemeral_asset_job__",
        run_id="0c8a9c0e-5d7b-4b39-9a55-2f3d1c6e7a10",
        status=dg.DagsterRunStatus.STARTED,
        tags={refresh.REFRESH_RUN_TAG: "true"},
    )
    instance.add_run(abandoned)
    refresh._save_pending(instance, {"genre_predictions"})
    monkeypatch.setenv(settings.CATALOG_DATE_ENV, "2024-12-31")
    defs = definitions(moved["catalog"], moved["data_dir"], "2024-12-31")
    scheduled = dt.datetime(2026, 12, 1, 4, tzinfo=dt.timezone.utc)
    cycle = run_refresh(defs, instance, scheduled, run_config=LOOP_OPS)
    assert instance.get_run_by_id(abandoned.run_id).status == dg.DagsterRunStatus.FAILURE
    assert cycle.runs[0].assets == ["genre_predictions"] and cycle.runs[0].success
    assert refresh._pending(instance) == set()
    # Nothing else was left undone: the next refresh starts with the schedule's run.
    again = run_refresh(defs, instance, scheduled, run_config=LOOP_OPS)
    assert [run.assets for run in again.runs] == [["movie_details", "raw_discover_pages"]]
