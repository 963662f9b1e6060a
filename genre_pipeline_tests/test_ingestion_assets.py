"""The ingestion assets, materialized for real against a replay of the demo catalog."""

import datetime as dt
import json

import dagster as dg

from genre_pipeline.defs import ingestion
from genre_pipeline.defs.resources import StorageResource, TMDbResource
from genre_pipeline.tmdb.snapshot import load_snapshot

from .conftest import ALL_YEARS, API_KEY, ASSETS, CHECKS, materialize_all
from .conftest import pipeline_resources as resources


def metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


def test_every_asset_materializes_and_a_rerun_costs_no_requests(catalog_copy, tmp_path):
    snapshot = load_snapshot(catalog_copy)
    instance = dg.DagsterInstance.ephemeral()
    res = resources(catalog_copy, tmp_path / "data")
    first = materialize_all(res, instance)[-1]
    details, posters = metadata(first, "movie_details"), metadata(first, "posters")
    assert details["movies"] == len(snapshot.movies) and details["fetched"] == len(snapshot.movies)
    with_poster = sum(1 for m in snapshot.movies.values() if m["poster_path"])
    assert posters["status_ok"] == with_poster and posters["status_no_poster"] == len(snapshot.movies) - with_poster
    assert all(check.passed for check in first.get_asset_check_evaluations())
    assert len(first.get_asset_check_evaluations()) == 2
    stored = (tmp_path / "data" / "test" / "details" / "movie_details.jsonl").read_text().splitlines()
    assert {json.loads(line)["id"] for line in stored} == set(snapshot.movies)

    again = materialize_all(res, instance)
    assert (
        sum(
            metadata(r, node)["requests"]
            for r in again
            for node in ["tmdb_configuration", "tmdb_genres", "raw_discover_pages", "movie_details", "posters"]
            if r.asset_materializations_for_node(node)
        )
        == 0
    )
    assert metadata(again[-1], "movie_details")["reused"] == len(snapshot.movies)
    assert _data_version(again[-1], "movie_details") == _data_version(first, "movie_details")


def _data_version(result, node):
    return result.asset_materializations_for_node(node)[-1].tags["dagster/data_version"]


def test_a_refresh_refetches_only_what_tmdb_says_changed(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = resources(catalog_copy, tmp_path / "data")
    before = materialize_all(res, instance)[-1]
    lines = [json.loads(line) for line in (catalog_copy / "movies.jsonl").read_text().splitlines()]
    lines[3]["tagline"] = "A brand new tagline."
    (catalog_copy / "movies.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (catalog_copy / "changes.jsonl").write_text(
        json.dumps({"id": lines[3]["id"], "changed_at": dt.date.today().isoformat()}) + "\n"
    )

    after = dg.materialize(
        ASSETS,
        selection=[ingestion.movie_details],
        resources=res,
        instance=instance,
        run_config={"ops": {"movie_details": {"config": {"check_changes": True}}}},
    )
    meta = metadata(after, "movie_details")
    assert meta["changed_refetched"] == 1 and meta["fetched"] == 1 and meta["requests"] == 2  # changes + 1 movie
    assert _data_version(after, "movie_details") != _data_version(before, "movie_details")
    stored = [
        json.loads(line)
        for line in (tmp_path / "data" / "test" / "details" / "movie_details.jsonl").read_text().splitlines()
    ]
    assert next(m for m in stored if m["id"] == lines[3]["id"])["tagline"] == "A brand new tagline."


def test_downstream_follows_only_when_the_data_changed(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = resources(catalog_copy, tmp_path / "data")
    defs = dg.Definitions(assets=ASSETS, resources=res)
    materialize_all(res, instance)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert tick.total_requested == 0

    # A refresh that finds the same movies: nothing downstream is requested.
    refresh = {"ops": {"raw_discover_pages": {"config": {"refresh": True}}}}
    dg.materialize([ingestion.raw_discover_pages], resources=res, instance=instance, tags=ALL_YEARS, run_config=refresh)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.total_requested == 0

    # A new movie appears on TMDb: movie_details is requested.
    lines = (catalog_copy / "movies.jsonl").read_text().splitlines()
    newcomer = {**json.loads(lines[0]), "id": 990_001, "title": "A New Release"}
    (catalog_copy / "movies.jsonl").write_text("\n".join(lines + [json.dumps(newcomer)]) + "\n")
    dg.materialize([ingestion.raw_discover_pages], resources=res, instance=instance, tags=ALL_YEARS, run_config=refresh)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(dg.AssetKey("movie_details")) == {None}
    assert tick.total_requested == 1


def test_the_credential_never_reaches_dagster_events(replay, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = {
        "tmdb": TMDbResource(source="tmdb", api_key=API_KEY, base_url=replay.api_url, rate_limit_per_s=500),
        "storage": StorageResource(data_dir=str(tmp_path), source="test"),
    }
    assert dg.materialize([ingestion.tmdb_configuration], resources=res, instance=instance).success
    bad = {
        **res,
        "tmdb": TMDbResource(source="tmdb", api_key="not-the-key-77", base_url=replay.api_url, rate_limit_per_s=500),
    }
    failed = dg.materialize([ingestion.tmdb_genres], resources=bad, instance=instance, raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "TMDB_API_KEY" in failure.event_specific_data.error.message
    assert len([e for e in failed.all_events if e.event_type_value == "STEP_RESTARTED"]) == 0  # not retried
    runs = instance.get_runs()
    everything = " ".join(str(record) for run in runs for record in instance.all_logs(run.run_id))
    everything += " ".join(str(run.run_config) + str(run.tags) for run in runs)
    assert len(runs) == 2 and "tmdb_genres" in everything
    assert API_KEY not in everything and "not-the-key-77" not in everything


def test_a_missing_poster_file_fails_its_check(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    next((tmp_path / "data" / "test" / "posters" / "images").iterdir()).unlink()
    result = dg.materialize(
        ASSETS + CHECKS,
        selection=dg.AssetSelection.checks(ingestion.posters_stored_as_recorded),
        resources=res,
        instance=instance,
        raise_on_error=False,
    )
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["missing_files"].value == 1


def test_an_unknown_poster_size_is_refused(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    result = dg.materialize(
        ASSETS,
        selection=[ingestion.posters],
        resources=res,
        instance=instance,
        run_config={"ops": {"posters": {"config": {"size": "w999"}}}},
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "'w999' is not one TMDb serves" in failure.event_specific_data.error.message
    assert not any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)
