"""Automation shared by the assets: when they rerun, how a TMDb call retries, and how fresh the daily
refresh keeps them."""

import datetime as dt

import dagster as dg

AC = dg.AutomationCondition

# Like AutomationCondition.eager(), but a parent counts as updated only when its data
# version changed: a refresh that brings nothing new reruns nothing downstream.
ON_UPSTREAM_DATA_CHANGE = (
    (
        AC.newly_missing() | AC.any_deps_match(AC.data_version_changed() & ~AC.executed_with_root_target())
    ).since_last_handled()
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("on_upstream_data_change")


def when_dep_data_changes(dep: str, label: str) -> dg.AutomationCondition:
    """Like ON_UPSTREAM_DATA_CHANGE, but only a new data version of ``dep`` requests the asset: the
    model assets follow retraining_decision, not every refreshed movie, embedding or split."""
    return (
        (
            AC.newly_missing()
            | AC.any_deps_match(AC.data_version_changed() & ~AC.executed_with_root_target()).allow(
                dg.AssetSelection.assets(dep)
            )
        ).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(label)


TMDB_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


# The daily refresh's tick (tmdb_refresh_schedule), and freshness policies for what it keeps current: the UI
# marks an asset failing its policy when it was not materialized in the window before the policy's deadline
# (the TMDb assets within two hours of the tick; monitoring and predictions, which wait for embeddings and
# any retraining, within six). An asset downstream reruns only when its inputs' data changed, so on a day
# that brings TMDb nothing new it is flagged although current: the flag says the refresh did not reach it.
REFRESH_CRON = "0 4 * * *"
TMDB_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 6 * * *", lower_bound_delta=dt.timedelta(hours=2))
DOWNSTREAM_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 10 * * *", lower_bound_delta=dt.timedelta(hours=6))
