"""One refresh cycle in one process, as the Dagster daemon runs it: the TMDb refresh schedule's run,
then each run declarative automation requests, until it requests none.

    python -m genre_pipeline.refresh            # DAGSTER_HOME's instance, the environment's source

The daemon (`dagster dev`, or the cluster) is the production path; this is for CI, benchmarks and a
catalog replayed as of a date (GENRE_PIPELINE_CATALOG_DATE), where no daemon runs between two dates.
The last line printed is one JSON object: each run's assets, success and failed checks.
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

MAX_ROUNDS = 40  # a chain of about twenty steps, each requested once: more would be a loop


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
    started = time.monotonic()
    runs = []
    run_config = run_config or {}

    def launch(keys, config: dict | None = None, **options) -> None:
        merged = _config_for(run_config, keys)
        merged["ops"] = {**merged.get("ops", {}), **(config or {}).get("ops", {})}
        runs.append(_run(defs, instance, keys, run_config=merged, **options))
        if on_run:
            on_run(runs[-1])

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
    print(f"{state} {run.wall_s:7.1f} s  {', '.join(run.assets) or '(nothing)'}{checks}", file=sys.stderr, flush=True)


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
