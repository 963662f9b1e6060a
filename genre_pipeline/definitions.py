"""The code location: every asset, check, schedule and resource of genre_pipeline."""

import dagster as dg

from genre_pipeline.defs import ingestion
from genre_pipeline.defs.resources import build_resources
from genre_pipeline.defs.schedules import tmdb_refresh_schedule

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingestion]),
    asset_checks=dg.load_asset_checks_from_modules([ingestion]),
    schedules=[tmdb_refresh_schedule],
    resources=build_resources(),
)
