"""``genre-pipeline cluster up|down|status|materialize``: the local scale-out deployment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genre_pipeline import settings
from genre_pipeline.cluster import local


def _layout(args: argparse.Namespace) -> local.ClusterLayout:
    return local.ClusterLayout.at(args.root)


def _up(args: argparse.Namespace) -> int:
    ports = local.Ports(postgres=args.postgres_port, redis=args.redis_port, webserver=args.webserver_port)
    layout = local.up(args.root, workers=args.workers, ports=ports, data_dir=args.data_dir)
    env = local.read_environment(layout)
    print(f"cluster up at {layout.root}: {', '.join(sorted(local.running_services(layout)))} and PostgreSQL")
    print(f"Dagster UI: {env['DAGSTER_WEBSERVER_URL']}  data folder: {env[settings.DATA_DIR_ENV]}")
    print(f"workers: {', '.join(local.ping_workers(env))}")
    print(f"use it from a shell (dagster, mlflow, genre-pipeline predict): source {layout.env_file}")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = local.down(args.root)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'} (data, database and logs kept in {args.root})")
    return 0


def _status(args: argparse.Namespace) -> int:
    layout = _layout(args)
    services = local.running_services(layout)
    print(
        json.dumps(
            {
                "root": str(layout.root),
                "running": services,
                "workers": local.ping_workers(local.read_environment(layout)) if services else [],
            },
            indent=2,
        )
    )
    return 0 if services else 1


def _materialize(args: argparse.Namespace) -> int:
    from genre_pipeline.cluster.runs import Deployment

    layout = _layout(args)
    env = local.process_environment(layout)
    deployment = Deployment(env["DAGSTER_WEBSERVER_URL"])
    assets = deployment.asset_keys() if args.select == "*" else [key.strip() for key in args.select.split(",")]
    if args.partition_range:
        first, _, last = args.partition_range.partition("...")
    else:
        years = settings.year_range(settings.choose_source(env), env)
        first, last = str(years[0]), str(years[1])
    run_id = deployment.launch(assets, partition_range=(first, last))
    print(f"queued run {run_id}: {deployment.url}/runs/{run_id}", flush=True)
    chain = deployment.wait(run_id)
    for run in chain:
        print(f"run {run['runId']}: {run['status']}")
        steps = deployment.steps(run["runId"])
        width = max((len(step.step) for step in steps), default=0)
        for step in steps:
            print(f"  {step.step:<{width}}  {step.status:<10} {step.worker or '-':<20} {step.seconds or 0:>8.1f} s")
    return 0 if chain[-1]["status"] == "SUCCESS" else 1


def add_parser(commands) -> None:
    cluster = commands.add_parser(
        "cluster", help="a local scale-out deployment: PostgreSQL, Redis, Celery workers, Dagster daemon and UI"
    )
    cluster.add_argument("--root", type=Path, default=local.DEFAULT_ROOT, help="its folder (default: .cluster)")
    actions = cluster.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start it (PostgreSQL and Redis from the Debian packages)")
    up.add_argument("--workers", type=int, default=2, help="Celery workers, each one step at a time")
    up.add_argument("--postgres-port", type=int, default=local.Ports.postgres)
    up.add_argument("--redis-port", type=int, default=local.Ports.redis)
    up.add_argument("--webserver-port", type=int, default=local.Ports.webserver)
    up.add_argument("--data-dir", default=None, help="the shared data folder (default: <root>/shared/data)")
    up.set_defaults(handler=_up)
    actions.add_parser("down", help="stop it; data, database and logs stay").set_defaults(handler=_down)
    actions.add_parser("status", help="which services run").set_defaults(handler=_status)
    materialize = actions.add_parser("materialize", help="queue a run through the deployment and wait for it")
    materialize.add_argument("--select", default="*", help="asset keys, comma-separated, or * (default)")
    materialize.add_argument("--partition-range", default=None, help="FIRST...LAST (default: the source's years)")
    materialize.set_defaults(handler=_materialize)
