"""Data-set assets: clean movies, genre label matrices, stable stratified splits, the EDA report."""

import time

import dagster as dg
import pandas as pd

from genre_pipeline.dataset import cleaning, eda, labels, splits
from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import config_from_dataclass, markdown_images, markdown_table, to_dataclass
from genre_pipeline.defs.ingestion import movie_details, posters
from genre_pipeline.defs.resources import DataQualityResource, StorageResource, TMDbResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.store import frame_fingerprint

CleaningConfig = config_from_dataclass(cleaning.CleaningRules, "CleaningConfig")


LabelConfig = config_from_dataclass(labels.LabelRules, "LabelConfig")
SplitConfig = config_from_dataclass(splits.SplitFractions, "SplitConfig")


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 2)


def _load_label_set(storage: StorageResource, name: str) -> labels.LabelSet:
    return labels.LabelSet.from_frame(name, storage.store.read_table(storage.store.labels_file(name)))


@dg.asset(
    group_name="dataset",
    deps=[movie_details, posters],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"pandas"},
)
def movies_clean(config: CleaningConfig, storage: StorageResource) -> dg.MaterializeResult:
    """One row per movie: title, year, overview, tagline, the model text, poster file and status, genres."""
    store, started = storage.store, time.monotonic()
    frame = cleaning.details_frame(list(store.read_details().values()), poster_files.read_statuses(store))
    result = cleaning.clean_movies(frame, to_dataclass(cleaning.CleaningRules, config))
    store.write_table(store.movies_clean_file, result.movies)
    report = {
        "rows_in": result.rows_in,
        "rows_kept": len(result.movies),
        "dropped": result.dropped,
        "kept_by_tagline_policy": result.kept_by_tagline_policy,
        "rules": vars(config),
    }
    store.write_json(store.cleaning_report_file, report)
    drops = pd.DataFrame({"rule": list(result.dropped), "dropped": list(result.dropped.values())})
    return dg.MaterializeResult(
        metadata={
            "rows_in": result.rows_in,
            "rows_kept": len(result.movies),
            **{f"dropped_{rule}": count for rule, count in result.dropped.items()},
            "drops": markdown_table(drops),
            "kept_if_require_tagline": result.kept_by_tagline_policy["require_tagline"],
            "kept_if_tagline_optional": result.kept_by_tagline_policy["keep_without_tagline"],
            "with_usable_poster": int((result.movies["poster_status"] == poster_files.OK).sum()),
            "preview": markdown_table(
                result.movies[["id", "title", "release_year", "text", "genres", "poster_status"]], 10
            ),
            "elapsed_s": _elapsed(started),
        },
        data_version=dg.DataVersion(frame_fingerprint(result.movies)),
    )


@dg.asset(group_name="dataset", deps=[movies_clean], automation_condition=ON_UPSTREAM_DATA_CHANGE, kinds={"pandas"})
def genre_labels(config: LabelConfig, storage: StorageResource) -> dg.MaterializeResult:
    """The full genre matrix (rare genres pruned) and its merge into fewer labels with Others, with class lists."""
    store, started = storage.store, time.monotonic()
    movies = store.read_table(store.movies_clean_file)
    try:
        result = labels.build_labels(
            movies["id"],
            [list(g) for g in movies["genres"]],
            to_dataclass(labels.LabelRules, config),
        )
    except ValueError as error:
        raise dg.Failure(str(error), allow_retries=False) from None
    for label_set in (result.full, result.merged):
        store.write_table(store.labels_file(label_set.name), label_set.frame())
    store.write_json(
        store.label_sets_file,
        {
            labels.FULL: result.full.classes,
            labels.MERGED: result.merged.classes,
            "pruned": result.pruned,
            "merged_into_others": result.merge_reasons,
            "connectivity": result.connectivity,
            "rule": labels.__doc__,
        },
    )
    merges = pd.DataFrame(
        {
            "genre": list(result.merge_reasons),
            "movies": [result.full.counts()[g] for g in result.merge_reasons],
            "reason": list(result.merge_reasons.values()),
        }
    )
    counts = pd.DataFrame({"genre": result.full.classes, "movies": list(result.full.counts().values())})
    return dg.MaterializeResult(
        metadata={
            "movies": len(result.full.ids),
            "labels_full": len(result.full.classes),
            "labels_merged": len(result.merged.classes),
            "pruned_genres": dg.MetadataValue.json(result.pruned),
            "dropped_without_label": result.dropped_without_label,
            "merged_into_others": markdown_table(merges),
            "merge_rule": dg.MetadataValue.md(labels.__doc__),
            "genre_counts": markdown_table(counts.sort_values("movies", ascending=False), 30),
            "merged_counts": dg.MetadataValue.json(result.merged.counts()),
            "elapsed_s": _elapsed(started),
        },
        data_version=dg.DataVersion(frame_fingerprint(result.merged.frame()) + frame_fingerprint(result.full.frame())),
    )


@dg.asset(group_name="dataset", deps=[genre_labels], automation_condition=ON_UPSTREAM_DATA_CHANGE, kinds={"pandas"})
def dataset_splits(config: SplitConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Train / validation / test by iterative stratification on the full labels; a movie keeps its split."""
    store, started = storage.store, time.monotonic()
    full = _load_label_set(storage, labels.FULL)
    history = store.read_table(store.split_history_file) if store.split_history_file.is_file() else None
    current, updated, newly_assigned = splits.assign_splits(
        full.ids,
        full.matrix,
        history,
        fractions=to_dataclass(splits.SplitFractions, config),
    )
    store.write_table(store.split_history_file, updated)
    store.write_table(store.splits_file, current)
    counts = splits.split_label_counts(current, full.frame())
    sizes = current["split"].value_counts().reindex(list(splits.SPLITS), fill_value=0)
    return dg.MaterializeResult(
        metadata={
            **{f"{name}_movies": int(sizes[name]) for name in splits.SPLITS},
            "newly_assigned": newly_assigned,
            "kept_from_history": len(current) - newly_assigned,
            "genre_counts_per_split": markdown_table(counts.reset_index(names="genre"), 30),
            "elapsed_s": _elapsed(started),
        },
        data_version=dg.DataVersion(frame_fingerprint(current)),
    )


@dg.asset(
    group_name="dataset",
    deps=[movies_clean, genre_labels, dataset_splits, posters],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"matplotlib", "html"},
)
def eda_report(storage: StorageResource, tmdb: TMDbResource) -> dg.MaterializeResult:
    """The original study's exploratory plots as PNG files and one self-contained HTML page."""
    store, started = storage.store, time.monotonic()
    movies = store.read_table(store.movies_clean_file)
    report = store.read_json(store.cleaning_report_file, {})
    rules = report.get("rules", {})
    status_counts = poster_files.read_statuses(store)["status"].value_counts().to_dict()
    paths = eda.write_eda_report(
        movies,
        _load_label_set(storage, labels.FULL),
        _load_label_set(storage, labels.MERGED),
        {status: int(status_counts.get(status, 0)) for status in poster_files.STATUSES},
        store.eda_dir,
        token_limits=(rules.get("min_overview_tokens", 0), rules.get("max_overview_tokens", 0)),
        source_label=tmdb.source_label,
    )
    plots = markdown_images({eda.PLOTS[name]: path for name, path in paths.items() if name in eda.PLOTS})
    return dg.MaterializeResult(
        metadata={
            "plots": plots,
            "html_report": dg.MetadataValue.path(str(paths["html"])),
            "png_files": len(paths) - 1,
            "elapsed_s": _elapsed(started),
        }
    )


# --- checks --------------------------------------------------------------------------
@dg.asset_check(asset=movies_clean, blocking=True, description="No movie id appears twice.")
def movies_clean_unique_ids(storage: StorageResource) -> dg.AssetCheckResult:
    movies = storage.store.read_table(storage.store.movies_clean_file)
    duplicates = movies["id"][movies["id"].duplicated()].tolist()
    return dg.AssetCheckResult(
        passed=not duplicates, metadata={"duplicates": len(duplicates), "examples": duplicates[:10]}
    )


@dg.asset_check(
    asset=movies_clean, description="No cleaning rule drops more than the configured share of the rows (warning)."
)
def cleaning_drop_fractions(storage: StorageResource, quality: DataQualityResource) -> dg.AssetCheckResult:
    report = storage.store.read_json(storage.store.cleaning_report_file, {})
    rows_in = max(report.get("rows_in", 0), 1)
    fractions = {rule: count / rows_in for rule, count in report.get("dropped", {}).items()}
    too_many = {rule: round(f, 4) for rule, f in fractions.items() if f > quality.max_drop_fraction}
    return dg.AssetCheckResult(
        passed=not too_many,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "ceiling": quality.max_drop_fraction,
            "fractions": dg.MetadataValue.json({r: round(f, 4) for r, f in fractions.items()}),
            "over_ceiling": dg.MetadataValue.json(too_many),
        },
    )


@dg.asset_check(asset=movies_clean, description="Enough posters verified: ok / movies with a poster_path.")
def poster_ok_rate(storage: StorageResource, quality: DataQualityResource) -> dg.AssetCheckResult:
    movies = storage.store.read_table(storage.store.movies_clean_file)
    with_path = movies[movies["poster_status"] != poster_files.NO_POSTER]
    rate = float((with_path["poster_status"] == poster_files.OK).mean()) if len(with_path) else 1.0
    return dg.AssetCheckResult(
        passed=rate >= quality.min_poster_ok_rate,
        metadata={"ok_rate": round(rate, 4), "floor": quality.min_poster_ok_rate, "with_poster_path": len(with_path)},
    )


@dg.asset_check(
    asset=genre_labels,
    blocking=True,
    description="Each label matrix matches its class list, is 0/1, covers movies_clean, and every movie has a label.",
)
def label_matrices_consistent(storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.store
    classes = store.read_json(store.label_sets_file, {})
    movie_ids = set(store.read_table(store.movies_clean_file)["id"])
    problems = []
    for name in labels.LABEL_SETS:
        frame = store.read_table(store.labels_file(name))
        columns = [c for c in frame.columns if c != "id"]
        values = frame[columns].to_numpy()
        if columns != classes.get(name):
            problems.append(f"{name}: columns differ from the class list")
        if not set(pd.unique(values.ravel())) <= {0, 1}:
            problems.append(f"{name}: values other than 0 and 1")
        if (values.sum(axis=1) == 0).any():
            problems.append(f"{name}: {(values.sum(axis=1) == 0).sum()} movies without a label")
        if not set(frame["id"]) <= movie_ids or frame["id"].duplicated().any():
            problems.append(f"{name}: ids not a unique subset of movies_clean")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(
    asset=dataset_splits,
    blocking=True,
    description="Splits are disjoint and cover exactly the labelled movies of every label set.",
)
def splits_disjoint_and_covering(storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.store
    current = store.read_table(store.splits_file)
    problems = []
    if current["id"].duplicated().any():
        problems.append("a movie is in more than one split")
    for name in labels.LABEL_SETS:
        if set(store.read_table(store.labels_file(name))["id"]) != set(current["id"]):
            problems.append(f"{name}: splits do not cover exactly the labelled movies")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(
    asset=dataset_splits,
    description="Every genre has movies in every split. A warning, not a stop: a genre that a refresh newly "
    "labels keeps its older movies' splits, so it can lack validation or test movies until new ones arrive; "
    "its threshold then stays 0.5 and the figures of a split without it average the other genres.",
)
def every_genre_in_every_split(storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.store
    current = store.read_table(store.splits_file)
    missing = {}
    for name in labels.LABEL_SETS:
        counts = splits.split_label_counts(current, store.read_table(store.labels_file(name)))
        gaps = [f"{g} ({split})" for g in counts.index for split in counts.columns if counts.at[g, split] == 0]
        if gaps:
            missing[name] = gaps
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"missing": dg.MetadataValue.json(missing)},
    )
