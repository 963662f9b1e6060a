"""The daily TMDb refresh."""

import datetime as dt

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from genre_pipeline import settings
from genre_pipeline.defs.automation import REFRESH_CRON
from genre_pipeline.defs.ingestion import RELEASE_YEARS, movie_details, raw_discover_pages


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
