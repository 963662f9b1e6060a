"""Run the data-set assets on a snapshot folder ingested through the replay server.

    python benchmarks/dataset.py --snapshot ../shared/data/tmdb-snapshot

Ingestion goes into the data folder that `GENRE_PIPELINE_SNAPSHOT=DIR make run` uses (so
it is reused when already there) at a high local rate, and is not timed. Then
movies_clean, genre_labels, dataset_splits and eda_report are materialized with their
checks and timed. Prints rows kept and dropped by rule, both label sets with counts and
per-split counts; the last line is one JSON object.
"""

import argparse
import json
import time
from pathlib import Path

import dagster as dg
from common import materialization_metadata, materialize_ingestion, select_snapshot

from genre_pipeline import settings
from genre_pipeline.tmdb.snapshot import snapshot_years


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--ingest-rate", type=float, default=400.0, help="requests/s to the local replay")
    args = parser.parse_args()
    select_snapshot(args.snapshot)
    import pandas as pd

    from genre_pipeline.dataset.labels import FULL, LABEL_SETS, MERGED
    from genre_pipeline.dataset.splits import split_label_counts
    from genre_pipeline.defs import dataset
    from genre_pipeline.defs.resources import TMDbResource, build_resources

    resources = build_resources(settings.configured_source())
    resources["tmdb"] = TMDbResource(
        source="snapshot", snapshot_dir=str(args.snapshot.resolve()), rate_limit_per_s=args.ingest_rate, max_workers=16
    )
    instance = dg.DagsterInstance.ephemeral()
    first, last = snapshot_years(args.snapshot)
    ingest_wall, _ = materialize_ingestion(resources, instance, first, last)

    from genre_pipeline.defs import ingestion

    assets = [
        ingestion.movie_details,
        ingestion.posters,
        dataset.movies_clean,
        dataset.genre_labels,
        dataset.dataset_splits,
        dataset.eda_report,
    ]
    checks = dg.load_asset_checks_from_modules([dataset])
    started = time.monotonic()
    run = dg.materialize(
        assets + list(checks), selection=dg.AssetSelection.assets(*assets[2:]), resources=resources, instance=instance
    )
    wall = time.monotonic() - started
    metadata = materialization_metadata([run])

    store = resources["storage"].store
    report = json.loads(store.cleaning_report_file.read_text())
    label_sets = {name: pd.read_parquet(store.labels_file(name)) for name in LABEL_SETS}
    counts = {name: frame.drop(columns="id").sum().astype(int).to_dict() for name, frame in label_sets.items()}
    current = pd.read_parquet(store.splits_file)
    per_split = split_label_counts(current, label_sets[FULL])
    classes = json.loads(store.label_sets_file.read_text())
    check_results = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}

    print(f"rows in: {report['rows_in']}, kept: {report['rows_kept']}")
    for rule, dropped in report["dropped"].items():
        print(f"  dropped by {rule:>22}: {dropped}")
    print(f"tagline policy: keeps {report['kept_by_tagline_policy']}")
    for name in LABEL_SETS:
        print(f"{name} label set ({len(counts[name])} labels):")
        for genre, count in sorted(counts[name].items(), key=lambda item: -item[1]):
            print(f"  {genre:>16}: {count}")
    print("pruned:", classes["pruned"])
    for genre, reason in classes["merged_into_others"].items():
        print(f"merged into Others: {genre}: {reason}")
    print("per-split genre counts (full labels):")
    print(per_split.to_string())
    print("checks:", check_results)
    figures = {
        "movies_clean": report["rows_kept"],
        "rows_in": report["rows_in"],
        "dropped": report["dropped"],
        "kept_by_tagline_policy": report["kept_by_tagline_policy"],
        "labels_18": counts[FULL],
        "labels_12": counts[MERGED],
        "n_labels_full": len(counts[FULL]),
        "n_labels_merged": len(counts[MERGED]),
        "splits": current["split"].value_counts().to_dict(),
        "checks_passed": all(check_results.values()),
        "per_asset_s": {key: m["elapsed_s"] for key, m in metadata.items()},
        "ingest_wall_s_excluded": round(ingest_wall, 1),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
