"""The daily TMDb refresh, and the sensor that materializes again what a killed step or a damaged disk
left not whole."""

import datetime as dt

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from genre_pipeline import settings
from genre_pipeline.defs.automation import REFRESH_CRON
from genre_pipeline.defs.ingestion import RELEASE_YEARS, movie_details, raw_discover_pages
from genre_pipeline.defs.resources import StorageResource
from genre_pipeline.training import manifest


@dg.schedule(
    cron_schedule=REFRESH_CRON,
    # By key: the definitions load the assets with a backfill policy added, as new objects.
    target=dg.AssetSelection.assets(raw_discover_pages, movie_details),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-query the two latest release years and re-fetch movies /movie/changes lists; "
    "downstream assets follow only if the data changed.",
)
def tmdb_refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    at = refresh_time(context.scheduled_execution_time)
    keys = RELEASE_YEARS.get_partition_keys(current_time=at)
    if not keys:
        return dg.SkipReason("no release-year partition has started yet")
    latest = keys[-2:]
    return dg.RunRequest(
        run_key=f"tmdb-refresh-{at:%Y-%m-%d}",
        tags={ASSET_PARTITION_RANGE_START_TAG: latest[0], ASSET_PARTITION_RANGE_END_TAG: latest[-1]},
        run_config={
            "ops": {
                "raw_discover_pages": {"config": {"refresh": True}},
                "movie_details": {"config": {"check_changes": True}},
            }
        },
    )


def refresh_time(scheduled: dt.datetime) -> dt.datetime:
    """When the refresh stands: the end of the catalog date's day for a replay that has one (so that the
    two latest release years follow the catalog, not the wall clock), else the scheduled time."""
    as_of = settings.catalog_date()
    if as_of is None:
        return scheduled
    return dt.datetime.combine(as_of, dt.time(23, 59), tzinfo=scheduled.tzinfo)


IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


@dg.sensor(
    target=dg.AssetSelection.assets("text_embeddings", "poster_embeddings", *manifest.MODELS),
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="An embeddings cache that does not read whole, or a model folder or logged model that differs "
    "from its manifest (a step killed while writing, a truncated file): its asset is materialized again.",
)
def damaged_files_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    # A training in progress has removed its folder's manifest until it finishes: not damage.
    if context.instance.get_runs_count(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        return dg.SkipReason("runs are in progress: their files are checked once they end")
    found = manifest.damaged(storage.store)
    if not found:
        return dg.SkipReason("every embeddings cache and model folder is whole")
    for name, why in found.items():
        context.log.warning(f"{name}: {why}")
    return dg.RunRequest(asset_selection=[dg.AssetKey(name) for name in found], tags={"damaged_files": ",".join(found)})
