"""One refresh cycle in one process, as the Dagster daemon runs it: the TMDb refresh schedule's run,
then each run declarative automation requests, until it requests none.

    python -m genre_pipeline.refresh            # DAGSTER_HOME's instance, the environment's source

The daemon (`dagster dev`, or the cluster) is the production path; this is for CI, benchmarks and a
catalog replayed as of a date (GENRE_PIPELINE_CATALOG_DATE), where no daemon runs between two dates.
The last line printed is one JSON object: each run's assets, success and failed checks.

A cycle that was killed or failed is finished by the next one: its runs left "started" by a dead
process are marked failed (else their assets stay in progress, and automation never requests them
again), and the assets they did not materialize run first. One refresh at a time per instance (a lock).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._serdes import deserialize_value, serialize_value  # the daemon's own cursor format

from genre_pipeline import settings
from genre_pipeline.files import atomic_write_bytes
from genre_pipeline.tmdb.lock import exclusive

MAX_ROUNDS = 40  # a chain of about twenty steps, each requested once: more would be a loop
# Marks the runs a refresh launches: one found started while the refresh lock is free was left by a dead process.
REFRESH_RUN_TAG = "genre_pipeline/refresh"


@dataclasses.dataclass
class RefreshRun:
    assets: list[str]
    success: bool
    failed_checks: list[str]
    wall_s: float


@dataclasses.dataclass
class RefreshCycle:
    at: str
    runs: list[RefreshRun]
    wall_s: float

    def materialized(self) -> set[str]:
        return {asset for run in self.runs for asset in run.assets}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, keys, **options) -> RefreshRun:
    started = time.monotonic()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*keys),
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        **options,
    )
    materialized = sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})
    failed = sorted(
        f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.get_asset_check_evaluations() if not e.passed
    )
    return RefreshRun(materialized, result.success, failed, round(time.monotonic() - started, 2))


def _pending_file(instance: dg.DagsterInstance) -> Path:
    return Path(instance.root_directory) / "refresh_pending.json"


def _pending(instance: dg.DagsterInstance) -> set[str]:
    """The assets a launched run has not materialized yet (its process may have died meanwhile)."""
    path = _pending_file(instance)
    return set(json.loads(path.read_text())) if path.is_file() else set()


def _save_pending(instance: dg.DagsterInstance, assets: set[str]) -> None:
    atomic_write_bytes(_pending_file(instance), json.dumps(sorted(assets)).encode())


def fail_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the refresh runs still shown as starting or started: called holding the refresh lock,
    so their process is gone (killed, or its machine stopped). Returns their ids."""
    statuses = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    abandoned = instance.get_runs(filters=dg.RunsFilter(statuses=statuses, tags={REFRESH_RUN_TAG: "true"}))
    for run in abandoned:
        instance.report_run_failed(run, "its refresh process ended without finishing it (killed?)")
    return [run.run_id for run in abandoned]


def _damaged(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[str]:
    """What damaged_files_sensor would request now (the daemon runs it every ten minutes)."""
    sensor = defs.resolve_sensor_def("damaged_files_sensor")
    request = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    if not isinstance(request, dg.RunRequest):
        return set()
    log(f"not whole: {request.tags['damaged_files']}")
    return {key.to_user_string() for key in request.asset_selection}


def _cursor_file(instance: dg.DagsterInstance) -> Path:
    return Path(instance.root_directory) / "refresh_automation_cursor.json"


def _saved_cursor(instance: dg.DagsterInstance):
    path = _cursor_file(instance)
    return deserialize_value(path.read_text()) if path.is_file() else None


def _save_cursor(instance: dg.DagsterInstance, cursor) -> None:
    atomic_write_bytes(_cursor_file(instance), serialize_value(cursor).encode())


def _requested(tick) -> list[dg.AssetKey]:
    return [r.key for r in tick.results if isinstance(r.key, dg.AssetKey) and r.true_subset.size]


def _config_for(run_config: dict, keys) -> dict:
    """``run_config`` cut to the ops of the assets ``keys`` (a run refuses config for ops it lacks)."""
    names = {key.to_user_string() for key in keys}
    ops = {name: config for name, config in run_config.get("ops", {}).items() if name in names}
    return {**run_config, "ops": ops}


def run_refresh(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    scheduled: dt.datetime,
    *,
    run_config: dict | None = None,
    on_run=None,
) -> RefreshCycle:
    """The refresh schedule's run at ``scheduled``, then the automation's runs until it requests none
    (each passed to ``on_run`` as it ends). ``run_config`` (resources and ops) applies to every run, as
    a deployment's defaults would; the schedule's own config wins for its ops."""
    with exclusive(Path(instance.root_directory) / "refresh.lock", on_wait=lambda who: log(f"waiting for {who}")):
        return _refresh(defs, instance, scheduled, run_config or {}, on_run)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _refresh(defs: dg.Definitions, instance: dg.DagsterInstance, scheduled, run_config: dict, on_run) -> RefreshCycle:
    started = time.monotonic()
    runs = []

    def launch(keys, config: dict | None = None, tags: dict | None = None) -> None:
        merged = _config_for(run_config, keys)
        merged["ops"] = {**merged.get("ops", {}), **(config or {}).get("ops", {})}
        names = {key.to_user_string() for key in keys}
        # Kept pending until materialized: a run that dies or fails leaves them to the next refresh.
        _save_pending(instance, _pending(instance) | names)
        run = _run(defs, instance, keys, run_config=merged, tags={**(tags or {}), REFRESH_RUN_TAG: "true"})
        _save_pending(instance, _pending(instance) - (names if run.success else set(run.assets)))
        runs.append(run)
        if on_run:
            on_run(run)

    abandoned = fail_abandoned_runs(instance)
    if abandoned:
        log(f"marked failed {len(abandoned)} run(s) an earlier refresh left unfinished: {', '.join(abandoned)}")
    known = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    unfinished = sorted((_pending(instance) | _damaged(defs, instance)) & known)
    if unfinished:
        log(f"finishing what an earlier refresh left undone or not whole: {', '.join(unfinished)}")
        launch([dg.AssetKey.from_user_string(name) for name in unfinished])
    # The conditions compare data versions with the previous evaluation, kept from the last cycle (a
    # first cycle takes stock of today's): what an interrupted cycle left undone is requested again.
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=_saved_cursor(instance))
    if _requested(tick):
        launch(_requested(tick))
    schedule = defs.resolve_schedule_def("tmdb_refresh_schedule")
    request = schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=scheduled))
    if isinstance(request, dg.RunRequest):
        target = schedule.target.resolvable_to_job.selection.resolve(defs.resolve_asset_graph())
        launch(request.asset_selection or target, request.run_config, tags=request.tags)
    for _ in range(MAX_ROUNDS):
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        _save_cursor(instance, tick.cursor)
        keys = _requested(tick)
        if not keys:
            break
        launch(keys)
    else:
        raise RuntimeError(f"automation still requested runs after {MAX_ROUNDS} rounds: {keys}")
    return RefreshCycle(scheduled.isoformat(), runs, round(time.monotonic() - started, 2))


def _printed(run: RefreshRun) -> None:
    checks = f"  failed checks: {', '.join(run.failed_checks)}" if run.failed_checks else ""
    state = "ok    " if run.success else "FAILED"
    log(f"{state} {run.wall_s:7.1f} s  {', '.join(run.assets) or '(nothing)'}{checks}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m genre_pipeline.refresh", description=__doc__.split("\n")[0])
    parser.add_argument("--config-json", default="{}", help="run config for every run, as dagster's own option")
    args = parser.parse_args()
    if not settings.dagster_home():
        print(
            "DAGSTER_HOME is not set: set it to the folder of the Dagster instance to refresh "
            "(make run and make dev use .dagster_home in the project: export DAGSTER_HOME=$PWD/.dagster_home)",
            file=sys.stderr,
        )
        return 2
    from genre_pipeline.definitions import defs

    cycle = run_refresh(
        defs,
        dg.DagsterInstance.get(),
        dt.datetime.now(dt.timezone.utc),
        run_config=json.loads(args.config_json),
        on_run=_printed,
    )
    print(json.dumps(cycle.as_dict()))
    # A kept champion is a successful run (its check only warns): any failed run is a failure.
    return 0 if all(run.success for run in cycle.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
