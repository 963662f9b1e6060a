"""The code location loads, sources are chosen from the environment, the refresh schedule asks for the right runs."""

import datetime as dt
import json
import os

import dagster as dg
import pandas as pd
import pytest

from genre_pipeline import settings
from genre_pipeline.dataset.labels import LabelSet
from genre_pipeline.definitions import defs
from genre_pipeline.defs import models
from genre_pipeline.defs.resources import TrainingResource, build_resources
from genre_pipeline.defs.schedules import tmdb_refresh_schedule
from genre_pipeline.tmdb import snapshot


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"tmdb_configuration", "tmdb_genres", "raw_discover_pages", "movie_details", "posters"} <= keys
    assert {"movies_clean", "genre_labels", "dataset_splits", "eda_report"} <= keys
    assert {"baseline_model", "stacked_model", "model_comparison", "champion_model"} <= keys
    assert {"champion_on_new_movies", "retraining_decision"} <= keys
    checks = {key.name for key in graph.asset_check_keys}
    assert len(checks) == 15 and "challenger_beats_champion" in checks
    assert {name for name in checks if name.startswith("drift_")} == {
        "drift_genre_rate_shift",
        "drift_text_length_ks",
        "drift_language_shift",
        "drift_poster_availability_shift",
        "drift_embedding_domain_auc",
        "drift_predicted_rate_shift",
    }
    assert defs.resolve_schedule_def("tmdb_refresh_schedule")
    # As README says: the schedule waits for a user to turn it on, the automation that follows it is on.
    assert defs.resolve_schedule_def("tmdb_refresh_schedule").default_status == dg.DefaultScheduleStatus.STOPPED
    sensor = defs.resolve_sensor_def("default_automation_condition_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert graph.get(dg.AssetKey("movie_details")).automation_condition is not None
    # What lets one `dagster asset materialize --select '*' --partition-range` build the whole graph.
    assert {graph.get(key).backfill_policy for key in graph.get_all_asset_keys()} == {dg.BackfillPolicy.single_run()}


def test_the_schedule_refreshes_the_two_latest_years_and_changes():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2025, 6, 1, 4, 0))
    request = tmdb_refresh_schedule(context)
    assert request.tags["dagster/asset_partition_range_start"] == "2023"
    assert request.tags["dagster/asset_partition_range_end"] == "2024"
    ops = request.run_config["ops"]
    assert ops["raw_discover_pages"]["config"]["refresh"] is True
    assert ops["movie_details"]["config"]["check_changes"] is True


def test_a_catalog_date_sets_the_refresh_years_and_today(monkeypatch, tmp_path):
    """Replayed as of a date, the catalog's date, not the wall clock, says which years are the latest and
    what day the refresh stands at; the real API is never replayed as of a date."""
    monkeypatch.setenv(settings.CATALOG_DATE_ENV, "2019-12-31")
    request = tmdb_refresh_schedule(dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 30)))
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        "2018",
        "2019",
    )
    assert request.run_key == "tmdb-refresh-2019-12-31"
    env = {settings.CATALOG_DATE_ENV: "2019-12-31", "GENRE_PIPELINE_DATA": str(tmp_path)}
    assert settings.year_range(settings.choose_source({}), env) == (2015, 2019)
    assert build_resources(settings.choose_source(env), env)["tmdb"].today() == dt.date(2019, 12, 31)
    with pytest.raises(ValueError, match="TMDb API answers as of today"):
        settings.year_range(settings.choose_source({"TMDB_API_KEY": "k"}), env)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        settings.catalog_date({settings.CATALOG_DATE_ENV: "31/12/2019"})


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, "demo"),
        ({"TMDB_API_READ_ACCESS_TOKEN": "secret-token"}, "tmdb"),
        ({"TMDB_API_KEY": "secret-key", "TMDB_BASE_URL": "http://127.0.0.1:1/3"}, "tmdb"),
        ({"GENRE_PIPELINE_SNAPSHOT": "/somewhere/snap"}, "snapshot"),
    ],
)
def test_the_environment_selects_the_source(env, kind, tmp_path):
    env = {**env, "GENRE_PIPELINE_DATA": str(tmp_path)}
    assert settings.choose_source(env).kind == kind
    resources = build_resources(settings.choose_source(env), env)
    assert resources["storage"].data_dir == str(tmp_path)
    # Secrets stay environment references: the value is not in the resource's config.
    tmdb_config = repr(resources["tmdb"]._get_non_default_public_field_values())  # noqa: SLF001
    assert "secret-token" not in tmdb_config and "secret-key" not in tmdb_config


def test_year_range_from_the_environment():
    demo = settings.choose_source({})
    assert settings.year_range(demo, {"GENRE_PIPELINE_YEARS": "1999-2003"}) == (1999, 2003)
    assert settings.year_range(demo, {}) == (2015, 2024)
    with pytest.raises(ValueError, match="GENRE_PIPELINE_YEARS"):
        settings.year_range(demo, {"GENRE_PIPELINE_YEARS": "2003-1999"})


def test_a_snapshots_year_range_is_read_once_and_again_only_when_its_movies_change(catalog_copy, tmp_path, monkeypatch):
    env = {"GENRE_PIPELINE_SNAPSHOT": str(catalog_copy), "GENRE_PIPELINE_DATA": str(tmp_path)}
    source = settings.choose_source(env)
    first = settings.year_range(source, env)
    assert first == (2015, 2024)

    def parse_everything(root):
        raise AssertionError("the whole snapshot was parsed again")

    monkeypatch.setattr(snapshot, "load_snapshot", parse_everything)
    assert settings.year_range(source, env) == first  # from the record, as every code-location load does
    monkeypatch.undo()

    movies = catalog_copy / "movies.jsonl"
    movies.write_text(movies.read_text() + json.dumps({"id": 1, "title": "Old", "release_date": "1950-05-01"}) + "\n")
    assert settings.year_range(source, env) == (1950, 2024)


def test_encoders_with_the_same_basename_never_share_an_embedding_cache(tmp_path):
    from genre_pipeline.store import DataStore

    store = DataStore(tmp_path)
    first, second = (
        store.embeddings_file("text", "org-a/model", "onnx"),
        store.embeddings_file("text", "org-b/model", "onnx"),
    )
    assert first != second and first.name.startswith("text-model-onnx-")
    assert store.embeddings_file("text", "org-a/model", "onnx") == first
    assert store.embeddings_file("text", "org-a/model", "torch") != first


def test_a_label_set_that_does_not_exist_is_refused_at_launch_naming_the_choices():
    """The training resource's label set is checked when the run's resources are built, before any step;
    the plain code checks it where a label set is read."""
    refused = r"training:config:label_set not in enum type Literal\['full', 'merged'\] got genres"
    with pytest.raises(dg.DagsterInvalidConfigError, match=refused):
        dg.materialize(
            [models.baseline_model],
            resources={**build_resources(settings.choose_source({}), {}), "training": TrainingResource()},
            run_config={"resources": {"training": {"config": {"label_set": "genres"}}}},
        )
    with pytest.raises(ValueError, match="unknown label set 'genres': use one of full, merged"):
        LabelSet.from_frame("genres", pd.DataFrame({"id": [1], "Drama": [1]}))


@pytest.mark.parametrize(
    ("asset", "materialized", "evaluated", "state"),
    [
        ("movie_details", "04:20", "06:30", "PASS"),  # the refresh ran after its tick
        ("movie_details", "04:20 the day before", "06:30", "FAIL"),  # today's refresh never stored it
        ("genre_predictions", "05:40", "10:30", "PASS"),  # predictions follow a refresh that retrained
        ("champion_on_new_movies", "02:00", "10:30", "FAIL"),  # before today's refresh: stale
    ],
)
def test_the_daily_refresh_keeps_its_assets_fresh_by_their_policies(tmp_path, asset, materialized, evaluated, state):
    """Dagster's own evaluator (the freshness daemon's) on the code location's policies, a day of
    materializations replayed in a real instance: what the UI shows as fresh or failing."""
    import asyncio

    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.test_utils import freeze_time

    def at(when: str) -> dt.datetime:
        clock, _, previous = when.partition(" ")
        day = dt.date(2026, 3, 10) - dt.timedelta(days=1 if previous else 0)
        return dt.datetime.combine(day, dt.time.fromisoformat(clock), tzinfo=dt.UTC)

    assert tmdb_refresh_schedule.cron_schedule == "0 4 * * *"
    node = defs.resolve_asset_graph().get(dg.AssetKey(asset))
    evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(node.freshness_policy)]()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with freeze_time(at(materialized)):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset))
        with freeze_time(at(evaluated)):
            result = asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))
    assert result == FreshnessState[state]


def test_the_dg_cli_lists_and_launches_the_code_location(tmp_path):
    """`dg` reads [tool.dg] in pyproject.toml: the same code location as the `dagster` CLI (the demo catalog;
    .ci/run checks it with `dg check defs`)."""
    from .conftest import BIN, run_command

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "GENRE_PIPELINE_"))}
    env |= {"DAGSTER_HOME": str(tmp_path), "GENRE_PIPELINE_DATA": str(tmp_path / "data")}
    listed = run_command([BIN / "dg", "list", "defs", "--json"], env)
    assets = {entry["asset_key"] for entry in json.loads(listed.stdout)["assets"]}
    assert {"raw_discover_pages", "movie_details", "stacked_model", "champion_model", "genre_predictions"} <= assets
    run_command([BIN / "dg", "launch", "--assets", "tmdb_genres"], env)
    (stored,) = (tmp_path / "data").glob("*/raw/genres.json")
    assert json.loads(stored.read_text())["genres"]
