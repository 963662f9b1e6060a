"""The data-set assets and their checks, materialized on a replay of the demo catalog."""

import json

import dagster as dg
import pandas as pd
from PIL import Image

from genre_pipeline.defs import dataset
from genre_pipeline.defs.resources import DataQualityResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.store import DataStore

from .conftest import ASSETS, DATASET_ASSETS, DATASET_CHECKS, materialize_all, materialize_dataset, pipeline_resources


def checks_by_name(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[-1].metadata.items()}


def test_the_dataset_assets_materialize_and_their_checks_pass(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = pipeline_resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    result = materialize_dataset(res, instance)
    checks = checks_by_name(result)
    assert len(checks) == 6 and all(c.passed for c in checks.values()), {n: c.metadata for n, c in checks.items()}

    store = DataStore(tmp_path / "data" / "test")
    # A genre without validation movies (as a refresh that newly labels a genre can leave it) only warns.
    splits_frame, full = pd.read_parquet(store.splits_file), pd.read_parquet(store.labels_file("full"))
    genre = full.columns[1]
    emptied = splits_frame["id"].isin(full.loc[full[genre] == 1, "id"]) & (splits_frame["split"] == "validation")
    store.write_table(store.splits_file, splits_frame.assign(split=splits_frame["split"].mask(emptied, "train")))
    warned = checks_by_name(
        dg.materialize(
            ASSETS + DATASET_ASSETS + DATASET_CHECKS,
            selection=dg.AssetSelection.checks_for_assets(dataset.dataset_splits),
            resources=res,
            instance=instance,
        )
    )
    assert warned["splits_disjoint_and_covering"].passed
    gap = warned["every_genre_in_every_split"]
    assert not gap.passed and gap.severity == dg.AssetCheckSeverity.WARN
    assert f"{genre} (validation)" in gap.metadata["missing"].value["full"]
    store.write_table(store.splits_file, splits_frame)

    movies = pd.read_parquet(store.movies_clean_file)
    clean = metadata(result, "movies_clean")
    assert clean["rows_kept"] == len(movies) and clean["rows_in"] == len(store.read_details())
    assert clean["rows_in"] - clean["rows_kept"] == sum(v for k, v in clean.items() if k.startswith("dropped_"))
    assert clean["dropped_no_overview"] > 0 and clean["dropped_no_genres"] > 0  # the catalog has such rows
    assert clean["kept_if_require_tagline"] < clean["kept_if_tagline_optional"] == len(movies)
    assert (movies["poster_status"] == "ok").sum() == (movies["poster_file"].notna()).sum() > 0

    label_sets = json.loads(store.label_sets_file.read_text())
    merged = pd.read_parquet(store.labels_file("merged"))
    assert list(merged.columns[1:]) == label_sets["merged"]
    # The small test catalog keeps few genres: nothing to merge, so the two sets agree and have no Others.
    assert len(label_sets["merged"]) <= 12 and (label_sets["merged"] == label_sets["full"]) == (
        not label_sets["merged_into_others"]
    )

    html = metadata(result, "eda_report")["html_report"]
    assert html.endswith("eda_report.html")
    for png in store.eda_dir.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
    assert len(list(store.eda_dir.glob("*.png"))) == 8


def test_splits_survive_a_refresh_that_adds_movies(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = pipeline_resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    materialize_dataset(res, instance)
    store = DataStore(tmp_path / "data" / "test")
    before = pd.read_parquet(store.splits_file).set_index("id")["split"]

    # TMDb gains 40 movies: copies of existing ones under new ids and titles.
    lines = [json.loads(line) for line in (catalog_copy / "movies.jsonl").read_text().splitlines()]
    added = [{**m, "id": 800_000 + i, "title": f"{m['title']} II"} for i, m in enumerate(lines[:40])]
    (catalog_copy / "movies.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines + added))
    refresh = {"ops": {"raw_discover_pages": {"config": {"refresh": True}}}}
    materialize_all(res, instance, run_config=refresh)
    result = materialize_dataset(res, instance)
    assert all(c.passed for c in result.get_asset_check_evaluations())

    after = pd.read_parquet(store.splits_file).set_index("id")["split"]
    common = before.index.intersection(after.index)
    assert len(common) == len(before) and (before[common] == after[common]).all()
    new = after.index.difference(before.index)
    assert len(new) > 30 and metadata(result, "dataset_splits")["newly_assigned"] == len(new)


def test_a_failing_check_fails(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = pipeline_resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    strict = {**res, "quality": DataQualityResource(min_poster_ok_rate=1.0, max_drop_fraction=0.001)}
    # A poster that fails verification lowers the ok-rate below a floor of 1.0.
    store = DataStore(tmp_path / "data" / "test")
    status = poster_files.read_statuses(store)
    status.loc[status["status"] == "ok", "status"] = ["corrupt"] + ["ok"] * (int((status["status"] == "ok").sum()) - 1)
    poster_files.write_statuses(store, status)
    result = materialize_dataset(strict, instance)
    checks = checks_by_name(result)
    assert not checks["poster_ok_rate"].passed
    assert not checks["cleaning_drop_fractions"].passed
    assert checks["cleaning_drop_fractions"].severity == dg.AssetCheckSeverity.WARN
    assert checks["movies_clean_unique_ids"].passed


def test_a_broken_label_file_fails_its_blocking_check(catalog_copy, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    res = pipeline_resources(catalog_copy, tmp_path / "data")
    materialize_all(res, instance)
    materialize_dataset(res, instance)
    store = DataStore(tmp_path / "data" / "test")
    merged = pd.read_parquet(store.labels_file("merged"))
    store.write_table(store.labels_file("merged"), merged.iloc[:, :-1])  # a class column goes missing
    from genre_pipeline.defs import dataset

    result = dg.materialize(
        ASSETS + [dataset.movies_clean, dataset.genre_labels, dataset.label_matrices_consistent],
        selection=dg.AssetSelection.checks(dataset.label_matrices_consistent),
        resources=res,
        instance=instance,
        raise_on_error=False,
    )
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "columns differ" in str(evaluation.metadata["problems"].value)
