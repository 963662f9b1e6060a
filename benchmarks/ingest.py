"""Ingest a whole snapshot folder through the replay server at a fixed client rate limit.

    python benchmarks/ingest.py --snapshot ../shared/data/tmdb-snapshot --rate 40

Materializes every ingestion asset (all release-year partitions in one run) into a fresh
temporary data folder, then again with everything cached. The last line printed is one
JSON object with the figures.
"""

import argparse
import json
import tempfile
from pathlib import Path

import dagster as dg
from common import materialize_ingestion, select_snapshot

from genre_pipeline.tmdb.snapshot import load_snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--rate", type=float, default=40.0, help="client rate limit, requests per second")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    select_snapshot(args.snapshot)
    from genre_pipeline.defs.resources import StorageResource, TMDbResource

    snapshot = load_snapshot(args.snapshot)
    years = snapshot.years()
    dated = [m for m in snapshot.movies.values() if m.get("release_date")]
    expected_posters = sum(
        1 for m in dated if m.get("poster_path") and (snapshot.posters_dir / m["poster_path"].lstrip("/")).is_file()
    )
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as data_dir:
        resources = {
            "tmdb": TMDbResource(
                source="snapshot",
                snapshot_dir=str(args.snapshot.resolve()),
                rate_limit_per_s=args.rate,
                max_workers=args.workers,
            ),
            "storage": StorageResource(data_dir=data_dir, source="bench"),
        }
        wall, fresh = materialize_ingestion(resources, dg.DagsterInstance.ephemeral(), years[0], years[-1])
        cached_wall, cached = materialize_ingestion(resources, dg.DagsterInstance.ephemeral(), years[0], years[-1])

    def total(metadata: dict, field: str) -> int:
        return sum(int(m.get(field, 0)) for m in metadata.values())

    requests = total(fresh, "requests")
    figures = {
        "snapshot_movies": len(snapshot.movies),
        "undiscoverable_without_release_date": len(snapshot.movies) - len(dated),
        "expected_movies": len(dated),
        "expected_posters": expected_posters,
        "years": f"{years[0]}-{years[-1]}",
        "movies": fresh["movie_details"]["movies"],
        "posters_ok": fresh["posters"]["status_ok"],
        "posters_failed": fresh["posters"]["status_http_error"] + fresh["posters"]["status_corrupt"],
        "requests": requests,
        "retries": total(fresh, "retries"),
        "rate_per_s": args.rate,
        "wall_s": round(wall, 1),
        "floor_s": round(requests / args.rate, 1),
        "ratio": round(wall / (requests / args.rate), 3),
        "per_asset_s": {key: m["elapsed_s"] for key, m in fresh.items()},
        "cached_wall_s": round(cached_wall, 1),
        "cached_requests": total(cached, "requests"),
        "cached_fraction": round(cached_wall / wall, 3),
    }
    for key, value in figures.items():
        print(f"{key:>38}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
