"""The daily TMDb refresh."""

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from genre_pipeline.defs.ingestion import RELEASE_YEARS, movie_details, raw_discover_pages


@dg.schedule(
    cron_schedule="0 4 * * *",
    # By key: the definitions load the assets with a backfill policy added, as new objects.
    target=dg.AssetSelection.assets(raw_discover_pages, movie_details),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-query the two latest release years and re-fetch movies /movie/changes lists; "
    "downstream assets follow only if the data changed.",
)
def tmdb_refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    keys = RELEASE_YEARS.get_partition_keys(current_time=context.scheduled_execution_time)
    if not keys:
        return dg.SkipReason("no release-year partition has started yet")
    latest = keys[-2:]
    return dg.RunRequest(
        run_key=f"tmdb-refresh-{context.scheduled_execution_time:%Y-%m-%d}",
        tags={ASSET_PARTITION_RANGE_START_TAG: latest[0], ASSET_PARTITION_RANGE_END_TAG: latest[-1]},
        run_config={
            "ops": {
                "raw_discover_pages": {"config": {"refresh": True}},
                "movie_details": {"config": {"check_changes": True}},
            }
        },
    )
