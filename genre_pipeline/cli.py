"""The ``genre-pipeline`` command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from genre_pipeline import settings
from genre_pipeline.cluster import command as cluster_command
from genre_pipeline.tmdb import demo_catalog
from genre_pipeline.tmdb.faults import Faults
from genre_pipeline.tmdb.replay import DEFAULT_REPLAY_TOKEN, ReplayServer
from genre_pipeline.tmdb.snapshot import SnapshotLayoutError


def _tmdb_replay(args: argparse.Namespace) -> int:
    faults = Faults(
        rate_limit_fraction=args.rate_limit_fraction,
        retry_after_s=args.retry_after,
        server_error_fraction=args.server_error_fraction,
        slow_fraction=args.slow_fraction,
        slow_s=args.slow_s,
        drip_fraction=args.drip_fraction,
        drip_interval_s=args.drip_interval_s,
        truncated_image_fraction=args.truncated_image_fraction,
        corrupt_image_fraction=args.corrupt_image_fraction,
        max_per_path=args.max_faults_per_path,
        seed=args.seed,
    )
    server = ReplayServer(
        args.snapshot,
        host=args.host,
        port=args.port,
        token=args.token,
        api_key=args.api_key,
        faults=faults,
        as_of=args.as_of,
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
    first, last = settings.year_range(settings.configured_source())
    print(f"{first}...{last}")
    return 0


def _default_tracking_uri() -> str:
    from genre_pipeline.champion.registry import default_tracking_uri
    from genre_pipeline.store import DataStore

    return default_tracking_uri(DataStore(settings.default_data_dir() / settings.configured_source().slug))


def _tracking_uri(args: argparse.Namespace) -> int:
    print(_default_tracking_uri())
    return 0


def _champion(args: argparse.Namespace):
    from genre_pipeline.champion.predictor import GenrePredictor

    return GenrePredictor.from_registry(args.tracking_uri or _default_tracking_uri())


def _predict(args: argparse.Namespace) -> int:
    from genre_pipeline.models import movie

    row = {field.name: getattr(args, field.name) for field in movie.FIELDS if field.kind != "image"}
    refused = movie.problems(row)
    if refused:
        raise ValueError("; ".join(f"{field.option} {why}" for field, why in refused))
    notes, poster = [], args.poster
    if poster is not None and not Path(poster).is_file():
        why = "is a folder, not an image file" if Path(poster).is_dir() else "does not exist"
        notes.append(f"the poster {poster} {why}: predicted without it")
        poster = None
    metadata = {field.name: row[field.name] for field in movie.METADATA_FIELDS}
    predictor = _champion(args)
    prediction = predictor.predict(
        args.overview,
        args.tagline,
        poster,
        top_k=args.top_k,
        title=args.title,
        metadata=metadata,
        inputs_checked=True,  # movie.problems above
    )
    notes += prediction.notes
    for note in notes:
        print(f"genre-pipeline predict: {note}", file=sys.stderr)
    info = predictor.info
    if args.json:
        answer = {
            "genres": prediction.genres,
            "scores": prediction.scores_as_dicts(),
            "used_poster": prediction.used_poster,
            "notes": notes,
            "model": {"name": info["model"], "version": info["version"], "run_id": info["run_id"]},
        }
        print(json.dumps(answer))
        return 0
    print("decided genres: " + (", ".join(prediction.genres) or "none (no genre reaches its threshold)"))
    print(
        f"a genre is decided when its probability reaches its own threshold (tuned on validation); "
        f"listed: the {args.top_k} most probable and every decided one"
    )
    print(f"  {'genre':<16} {'probability':>11}    {'threshold':>9}  decided")
    decided = set(prediction.genres)
    for genre, probability, threshold in prediction.scores:
        relation, mark = (">=", "yes") if genre in decided else ("< ", "no")
        print(f"  {genre:<16} {probability:>11.3f} {relation} {threshold:>9.3f}  {mark}")
    print(("read the poster" if prediction.used_poster else "predicted without a poster") + f"; {_model_line(info)}")
    return 0


def _model_line(info: dict) -> str:
    version = f"genre-classifier v{info['version']}"
    return f"model: {info['model']} ({info['kind']}), {version}, label set {info['label_set']}"


SKIPPED_REASONS = {"no_overview": "without an overview", "no_label_in_set": "with no genre of the label set"}


def _evaluate(args: argparse.Namespace) -> int:
    import mlflow

    from genre_pipeline.champion.scoring import evaluate_snapshot
    from genre_pipeline.models.metrics import HEADLINE_KEYS
    from genre_pipeline.tmdb.snapshot import check_layout

    check_layout(Path(args.snapshot))
    predictor = _champion(args)
    train_ids_file = mlflow.artifacts.download_artifacts(
        run_id=predictor.info["run_id"], artifact_path="report/train_ids.json"
    )
    train_ids = set(json.loads(Path(train_ids_file).read_text()))

    def progress(done: int, total: int) -> None:
        print(f"scored {done}/{total}", file=sys.stderr, flush=True)

    result = evaluate_snapshot(predictor, args.snapshot, limit=args.limit, train_ids=train_ids, progress=progress)
    if args.json:
        print(json.dumps(result))
        return 0
    print(_model_line(predictor.info))
    skipped = ", ".join(f"{n} {SKIPPED_REASONS[why]}" for why, n in result["skipped"].items())
    print(
        f"movies scored: {result['n_movies']} (with a usable poster: {result['with_poster']}; "
        f"seen in training: {result['seen_in_training']}); skipped: {skipped}"
    )
    for key in HEADLINE_KEYS:
        print(f"  {key:<16} {result[key]:.4f}")
    print(f"  {'genre':<16} {'support':>7} {'precision':>9} {'recall':>7} {'f1':>6} {'auc':>6}")
    for row in result["per_genre"]:
        print(
            f"  {row['genre']:<16} {row['support']:>7} {row['precision']:>9.3f} {row['recall']:>7.3f} "
            f"{row['f1']:>6.3f} {row['roc_auc']:>6.3f}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from genre_pipeline.champion.registry import champion_version
    from genre_pipeline.serving import auth
    from genre_pipeline.serving.batching import BatchingOptions

    keys = auth.load_keys(args.api_keys_file)
    if not keys and not args.open and not auth.is_loopback(args.host):
        raise ValueError(
            f"refusing to listen on {args.host} without API keys: anyone who reaches it could use it. Give keys "
            f"(--api-keys-file FILE or {settings.API_KEYS_ENV}), or pass --open to say it is meant to be open."
        )
    # Checked before start-up, so that a missing champion is a clear error and not a server that is never ready.
    uri = args.tracking_uri or _default_tracking_uri()
    version = champion_version(MlflowClient(uri, uri), uri)
    from genre_pipeline.serving.process import configure_serving_process

    configure_serving_process(args.threads)
    import uvicorn

    from genre_pipeline.serving.app import create_app
    from genre_pipeline.serving.reloader import ChampionReloader

    batching = BatchingOptions(
        max_rows=args.max_batch,
        max_wait_s=args.batch_wait_ms / 1000,
        max_queue=args.max_queue,
        deadline_s=args.deadline,
    )
    gatekeeper = auth.Gatekeeper(keys, rate_per_s=args.rate_limit, burst=args.rate_burst)
    reloader = ChampionReloader(uri, poll_interval_s=args.poll_interval)
    app = create_app(reloader, batching=batching, gatekeeper=gatekeeper)
    access = f"{len(keys)} API key(s)" if keys else "open, no API key"
    print(f"serving genre-classifier v{version} on http://{args.host}:{args.port} ({access}); loading it", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _port(text: str) -> int:
    port = _at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genre-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("tmdb-replay", help="serve a snapshot folder with TMDb's API routes")
    replay.add_argument("--snapshot", required=True, help="folder laid out like ../shared/data/tmdb-snapshot")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=_port, default=8765)
    replay.add_argument(
        "--token",
        default=DEFAULT_REPLAY_TOKEN,
        help="read-access token the server accepts (a local value, not a TMDb secret)",
    )
    replay.add_argument("--api-key", default=None, help="also accept this ?api_key=")
    replay.add_argument(
        "--as-of",
        type=_date,
        default=None,
        help="serve the catalog as it stood on this date (YYYY-MM-DD): movies released by then, changes until then",
    )
    faults = replay.add_argument_group("fault injection")
    faults.add_argument("--rate-limit-fraction", type=float, default=0.0, help="share of requests answered 429")
    faults.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    faults.add_argument("--server-error-fraction", type=float, default=0.0, help="share answered 500/503")
    faults.add_argument("--slow-fraction", type=float, default=0.0, help="share answered after --slow-s")
    faults.add_argument("--slow-s", type=float, default=2.0)
    faults.add_argument("--drip-fraction", type=float, default=0.0, help="share answered one byte at a time")
    faults.add_argument("--drip-interval-s", type=float, default=2.0, help="seconds between dripped bytes")
    faults.add_argument("--truncated-image-fraction", type=float, default=0.0, help="share of posters cut short")
    faults.add_argument("--corrupt-image-fraction", type=float, default=0.0, help="share of posters garbled")
    faults.add_argument("--max-faults-per-path", type=int, default=None, help="at most this many faults per path")
    faults.add_argument("--seed", type=int, default=0)
    replay.set_defaults(handler=_tmdb_replay)

    demo = commands.add_parser("demo-catalog", help="write the synthetic demo catalog to a folder")
    demo.add_argument("--out", required=True)
    demo.add_argument("--movies", type=_at_least(1), default=demo_catalog.DEFAULT_MOVIES)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=_demo_catalog)

    years = commands.add_parser("years", help="print the release-year partition range as FIRST...LAST")
    years.set_defaults(handler=_years)

    tracking_uri = commands.add_parser("tracking-uri", help="print the MLflow tracking URI of the selected source")
    tracking_uri.set_defaults(handler=_tracking_uri)

    predict = commands.add_parser("predict", help="top genres for an overview (and poster) from the champion")
    from genre_pipeline.models import movie

    for field in movie.FIELDS:
        if field.kind == "text" and field.name not in movie.METADATA_COLUMNS:
            predict.add_argument(field.option, dest=field.name, required=field.required, help=field.description)
    predict.add_argument("--poster", default=None, help="a poster image file")
    metadata = predict.add_argument_group("TMDb metadata (each optional)")
    for field in movie.METADATA_FIELDS:
        number = {"number": float, "integer": int}.get(field.kind, str)
        metadata.add_argument(field.option, dest=field.name, type=number, default=None, help=field.description)
    predict.add_argument("--top-k", type=_at_least(1), default=3, help="list this many most probable genres")
    predict.add_argument("--json", action="store_true")
    predict.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $GENRE_PIPELINE_TRACKING_URI, else the data folder's sqlite)",
    )
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="score every movie of a snapshot folder with the champion")
    evaluate.add_argument("--snapshot", required=True, help="folder laid out like ../shared/data/tmdb-snapshot")
    evaluate.add_argument("--limit", type=_at_least(1), default=None, help="score only the first N movies")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--tracking-uri", default=None)
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser("serve", help="the champion over HTTP (API and web page); reloads when it changes")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--poll-interval", type=float, default=10.0, help="seconds between checks of the champion alias")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--tracking-uri", default=None)
    serve.add_argument(
        "--api-keys-file",
        type=Path,
        help="accepted API keys, one per line (also GENRE_PIPELINE_API_KEYS, comma-separated); none: open",
    )
    serve.add_argument("--open", action="store_true", help="allow listening beyond 127.0.0.1 without API keys")
    serve.add_argument("--rate-limit", type=float, default=None, help="requests per second per key (or per address)")
    serve.add_argument("--rate-burst", type=_at_least(1), default=None, help="requests at once (default: the rate)")
    serve.add_argument("--max-batch", type=_at_least(1), default=16, help="movies per model call (batched requests)")
    serve.add_argument("--batch-wait-ms", type=float, default=4.0, help="how long a call waits to gather requests")
    serve.add_argument("--max-queue", type=_at_least(1), default=64, help="requests waiting; more get 503 at once")
    serve.add_argument("--deadline", type=float, default=10.0, help="seconds to wait for the model (then 503)")
    serve.add_argument(
        "--threads", type=_at_least(1), default=os.cpu_count() or 1, help="inference threads of this process"
    )
    serve.set_defaults(handler=_serve)

    cluster_command.add_parser(commands)
    return parser


# A command's output is its answer: no library progress bars (weights loading, artifact downloads) on
# stderr. setdefault: a user who wants them back sets the variables.
QUIET_LIBRARIES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    from genre_pipeline.champion.registry import NoChampion
    from genre_pipeline.cluster.databases import ClusterError

    try:
        return args.handler(args)
    except (SnapshotLayoutError, NoChampion, ClusterError, ValueError, OSError) as error:
        print(f"genre-pipeline {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
