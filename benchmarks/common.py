"""What the benchmarks share: selecting a snapshot source and materializing ingestion as `make run` does."""

import logging
import os
import time
import warnings
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG


def select_snapshot(snapshot: Path) -> None:
    """Point the code location at a replay of ``snapshot`` (before genre_pipeline.defs is imported)."""
    os.environ["GENRE_PIPELINE_SNAPSHOT"] = str(snapshot.resolve())
    os.environ.pop("GENRE_PIPELINE_YEARS", None)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)


def materialize_ingestion(resources: dict, instance: dg.DagsterInstance, first_year: int, last_year: int):
    """Reference data, every release-year partition in one run, then details and posters.

    Returns the wall time and each asset's materialization metadata."""
    from genre_pipeline.defs import ingestion

    assets = [
        ingestion.tmdb_configuration,
        ingestion.tmdb_genres,
        ingestion.raw_discover_pages,
        ingestion.movie_details,
        ingestion.posters,
    ]
    years = {ASSET_PARTITION_RANGE_START_TAG: str(first_year), ASSET_PARTITION_RANGE_END_TAG: str(last_year)}
    started = time.monotonic()
    runs = [
        dg.materialize(assets, selection=assets[:2], resources=resources, instance=instance),
        dg.materialize(assets, selection=assets[2:3], resources=resources, instance=instance, tags=years),
        dg.materialize(assets, selection=assets[3:], resources=resources, instance=instance),
    ]
    return time.monotonic() - started, materialization_metadata(runs)


def materialization_metadata(runs) -> dict[str, dict]:
    metadata = {}
    for run in runs:
        for event in run.get_asset_materialization_events():
            values = {k: v.value for k, v in event.materialization.metadata.items()}
            metadata[event.asset_key.to_user_string()] = values
    return metadata
