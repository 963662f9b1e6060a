"""The ``genre-pipeline`` command."""

from __future__ import annotations

import argparse
import sys

from genre_pipeline import settings
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.replay import DEFAULT_REPLAY_TOKEN, Faults, ReplayServer
from genre_pipeline.tmdb.snapshot import SnapshotLayoutError


def _tmdb_replay(args: argparse.Namespace) -> int:
    faults = Faults(
        rate_limit_fraction=args.rate_limit_fraction,
        retry_after_s=args.retry_after,
        server_error_fraction=args.server_error_fraction,
        slow_fraction=args.slow_fraction,
        slow_s=args.slow_s,
        truncated_image_fraction=args.truncated_image_fraction,
        corrupt_image_fraction=args.corrupt_image_fraction,
        max_per_path=args.max_faults_per_path,
        seed=args.seed,
    )
    server = ReplayServer(
        args.snapshot, host=args.host, port=args.port, token=args.token, api_key=args.api_key, faults=faults
    )
    movies = len(server.state.snapshot.movies)
    print(f"TMDb replay of {args.snapshot} ({movies} movies) at {server.api_url}", flush=True)
    print(
        f"point the pipeline at it: TMDB_BASE_URL={server.api_url} and the credential the server was given", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _demo_catalog(args: argparse.Namespace) -> int:
    root = demo_catalog.generate(args.out, n_movies=args.movies, seed=args.seed)
    print(f"{demo_catalog.DEMO_LABEL}: {args.movies} movies in {root}")
    return 0


def _years(args: argparse.Namespace) -> int:
    first, last = settings.year_range(settings.choose_source())
    print(f"{first}...{last}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genre-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("tmdb-replay", help="serve a snapshot folder with TMDb's API routes")
    replay.add_argument("--snapshot", required=True, help="folder laid out like ../shared/data/tmdb-snapshot")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8765)
    replay.add_argument(
        "--token",
        default=DEFAULT_REPLAY_TOKEN,
        help="read-access token the server accepts (a local value, not a TMDb secret)",
    )
    replay.add_argument("--api-key", default=None, help="also accept this ?api_key=")
    faults = replay.add_argument_group("fault injection")
    faults.add_argument("--rate-limit-fraction", type=float, default=0.0, help="share of requests answered 429")
    faults.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    faults.add_argument("--server-error-fraction", type=float, default=0.0, help="share answered 500/503")
    faults.add_argument("--slow-fraction", type=float, default=0.0, help="share answered after --slow-s")
    faults.add_argument("--slow-s", type=float, default=2.0)
    faults.add_argument("--truncated-image-fraction", type=float, default=0.0, help="share of posters cut short")
    faults.add_argument("--corrupt-image-fraction", type=float, default=0.0, help="share of posters garbled")
    faults.add_argument("--max-faults-per-path", type=int, default=None, help="at most this many faults per path")
    faults.add_argument("--seed", type=int, default=0)
    replay.set_defaults(handler=_tmdb_replay)

    demo = commands.add_parser("demo-catalog", help="write the synthetic demo catalog to a folder")
    demo.add_argument("--out", required=True)
    demo.add_argument("--movies", type=int, default=demo_catalog.DEFAULT_MOVIES)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=_demo_catalog)

    years = commands.add_parser("years", help="print the release-year partition range as FIRST...LAST")
    years.set_defaults(handler=_years)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (SnapshotLayoutError, ValueError, OSError) as error:
        print(f"genre-pipeline {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
