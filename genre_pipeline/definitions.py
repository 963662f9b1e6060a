"""The code location: every asset, check, schedule and resource of genre_pipeline."""

import dagster as dg

from genre_pipeline import settings
from genre_pipeline.defs import dataset, embeddings, ingestion, models, monitoring, predictions
from genre_pipeline.defs.execution import build_executor
from genre_pipeline.defs.resources import build_resources
from genre_pipeline.defs.schedules import damaged_files_sensor, tmdb_refresh_schedule

defs = dg.Definitions(
    # Every asset runs a partition range in one run, so that one command builds the whole graph:
    # `dagster asset materialize --select '*' --partition-range FIRST...LAST` (the CLI takes a range
    # only when every selected asset has this policy; unpartitioned assets simply run once).
    assets=dg.load_assets_from_modules(
        [ingestion, dataset, embeddings, monitoring, models, predictions],
        backfill_policy=dg.BackfillPolicy.single_run(),
    ),
    asset_checks=dg.load_asset_checks_from_modules([ingestion, dataset, embeddings, monitoring, models, predictions]),
    schedules=[tmdb_refresh_schedule],
    # Declarative automation carries a refresh downstream: on from the start, so that turning on the
    # schedule (off until a user does) is all a daily refresh needs.
    sensors=[
        dg.AutomationConditionSensorDefinition(
            "default_automation_condition_sensor",
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
        damaged_files_sensor,
    ],
    resources=build_resources(settings.configured_source()),
    # In the run's process by default; on workers where the deployment says so (defs/execution.py).
    executor=build_executor(),
)
