"""The whole chain on a snapshot folder, as `GENRE_PIPELINE_SNAPSHOT=DIR make run` would, timed per asset.

    python benchmarks/models.py --snapshot ../shared/data/tmdb-snapshot

Ingestion comes from the data folder's cache (ingested first if missing, untimed). The
embedding cache is cleared so that embeddings are computed and their throughput measured
beside each encoder's raw forward throughput (unless --reuse-embeddings); an earlier MLflow store is moved aside
(renamed, not deleted) so that the champion this run registers is the one
`genre-pipeline predict` and `evaluate` then use. Prints per-asset wall times, every
model's test metrics (and the stack's members, with and without metadata and posters), warm
`predict` latency through the champion's pyfunc model, and the issue's targets met or not;
the last line is one JSON object.
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import dagster as dg
from common import materialize_ingestion, select_snapshot

from genre_pipeline import settings, tracking
from genre_pipeline.dataset.cleaning import metadata_fields
from genre_pipeline.tmdb.snapshot import load_snapshot, snapshot_years

CHAIN = [
    "movies_clean",
    "genre_labels",
    "dataset_splits",
    "eda_report",
    "text_embeddings",
    "poster_embeddings",
    "baseline_model",
    "text_model",
    "image_model",
    "fusion_model",
    "stacked_model",
    "champion_on_new_movies",
    "retraining_decision",
    "model_comparison",
    "champion_model",
]
TARGETS = {"champion_test_macro_f1": 0.66, "margin_over_members": 0.02, "chain_wall_s": 600, "predict_p50_ms": 100}


def predict_latency(tracking_uri: str, snapshot_dir: Path, n: int = 60) -> dict:
    """Warm latency of GenrePredictor.predict through the pyfunc model, poster and metadata included
    (what `genre-pipeline predict` runs after loading)."""
    from genre_pipeline.champion.predictor import GenrePredictor

    started = time.monotonic()
    predictor = GenrePredictor.from_registry(tracking_uri)
    load_s = time.monotonic() - started
    snapshot = load_snapshot(snapshot_dir)
    movies = [m for m in snapshot.movies.values() if m.get("poster_path") and m.get("overview")][: n + 5]
    timings = []
    for i, movie in enumerate(movies):
        poster = snapshot.posters_dir / movie["poster_path"].lstrip("/")
        t = time.perf_counter()
        predictor.predict(
            movie["overview"], movie.get("tagline"), poster, title=movie.get("title"), metadata=metadata_fields(movie)
        )
        if i >= 5:  # the first calls warm up
            timings.append((time.perf_counter() - t) * 1000)
    quantiles = statistics.quantiles(timings, n=20)
    return {
        "champion": predictor.info["model"],
        "uses_poster": predictor.uses_posters,
        "load_s": round(load_s, 1),
        "p50_ms": round(statistics.median(timings), 1),
        "p95_ms": round(quantiles[18], 1),
        "calls": len(timings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--ingest-rate", type=float, default=400.0)
    parser.add_argument(
        "--text-encoders", help="comma-separated, the training resource's text_encoders (default: its default)"
    )
    parser.add_argument(
        "--reuse-embeddings", action="store_true", help="keep cached embeddings: metrics only, no throughput"
    )
    args = parser.parse_args()
    select_snapshot(args.snapshot)
    from genre_pipeline.defs import dataset, embeddings, ingestion, models, monitoring
    from genre_pipeline.defs.resources import TMDbResource, TrainingResource, build_resources
    from genre_pipeline.models.metrics import HEADLINE_KEYS

    resources = build_resources(settings.configured_source())
    resources["tmdb"] = TMDbResource(
        source="snapshot", snapshot_dir=str(args.snapshot.resolve()), rate_limit_per_s=args.ingest_rate, max_workers=16
    )
    if args.text_encoders:
        resources["training"] = TrainingResource(text_encoders=args.text_encoders.split(","))
    store = resources["storage"].store
    instance = dg.DagsterInstance.ephemeral()
    first, last = snapshot_years(args.snapshot)
    ingest_wall, _ = materialize_ingestion(resources, instance, first, last)

    if not args.reuse_embeddings:
        shutil.rmtree(store.embeddings_dir, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for old in (store.mlflow_db, store.mlflow_artifacts_dir):
        if old.exists():
            old.rename(old.with_name(f"{old.name}.before-benchmark-{stamp}"))

    every_asset = dg.load_assets_from_modules([ingestion, dataset, embeddings, monitoring, models])
    checks = list(dg.load_asset_checks_from_modules([dataset, models]))
    wall, metadata = {}, {}
    started = time.monotonic()
    for name in CHAIN:
        t = time.monotonic()
        run = dg.materialize(
            every_asset + checks,
            selection=dg.AssetSelection.assets(name).without_checks()
            | dg.AssetSelection.checks_for_assets(dg.AssetKey(name)),
            resources=resources,
            instance=instance,
        )
        wall[name] = round(time.monotonic() - t, 1)
        event = run.asset_materializations_for_node(name)[-1]
        metadata[name] = {k: v.value for k, v in event.metadata.items()}
        print(f"{name:>18}: {wall[name]:>7.1f} s", flush=True)
    chain_wall = time.monotonic() - started

    throughput = {
        node: {
            k: metadata[node].get(k)
            for k in ("embeddings_per_s", "raw_forward_per_s", "throughput_ratio", "computed", "encoder", "backend")
        }
        for node in ("text_embeddings", "poster_embeddings")
    }
    results = {}
    for name in models.MODEL_ASSETS:
        report = json.loads((store.models_dir / name / "report.json").read_text())
        results[name] = {
            "kind": report["kind"],
            "validation_macro_f1": round(report["validation_macro_f1"], 4),
            **{k: round(report["test"][k], 4) for k in HEADLINE_KEYS},
            "macro_f1_top3_rule": round(report["test_top3_rule"]["macro_f1"], 4),
            "macro_f1_with_poster": report["test_subsets"].get("with_poster", {}).get("macro_f1"),
            "test_movies": report["n_test"],
            # Trained before the newest years, scored on them; or why there is no such figure.
            "temporal_years": report.get("temporal_test_years"),
            "temporal_macro_f1": report.get("temporal_test_macro_f1") and round(report["temporal_test_macro_f1"], 4),
            "temporal_not_measured": report.get("temporal_test_not_measured"),
        }
        print(name, results[name], flush=True)
    stack = json.loads(store.model_report_file("stacked_model").read_text())
    stack_figures = {
        "members": {name: {k: round(v, 4) for k, v in m.items()} for name, m in stack["members"].items()},
        "with_metadata": round(stack["test"]["macro_f1"], 4),
        "without_metadata": round(stack["test_macro_f1_without_metadata"], 4),
        "without_posters": round(stack["test_macro_f1_without_posters"], 4),
        "on_movies_with_posters": round(stack["test_subsets"]["with_poster"]["macro_f1"], 4),
    }
    latency = predict_latency(tracking.sqlite_uri(store.mlflow_db), args.snapshot)
    champion = metadata["model_comparison"]["candidate"]
    champion_f1 = results[champion]["macro_f1"]
    best_single = max(
        [m["test_macro_f1"] for m in stack["members"].values()]
        + [results[n]["macro_f1"] for n in models.MODEL_ASSETS if n != "stacked_model"]
    )
    targets = {
        "champion": champion,
        "champion_test_macro_f1": champion_f1,
        "best_single_model_test_macro_f1": round(best_single, 4),
        "champion_test_macro_f1_met": champion_f1 >= TARGETS["champion_test_macro_f1"],
        "margin_over_members_met": champion_f1 - best_single >= TARGETS["margin_over_members"],
        "margin_over_baseline_met": champion_f1 - results["baseline_model"]["macro_f1"]
        >= TARGETS["margin_over_members"],
        "chain_under_10_min_met": chain_wall < TARGETS["chain_wall_s"],
        "predict_p50_under_100_ms_met": latency["p50_ms"] < TARGETS["predict_p50_ms"],
    }
    print("throughput:", throughput)
    print("stack:", stack_figures)
    print("champion:", metadata["model_comparison"]["decision"])
    print("predict latency:", latency)
    print("targets:", targets)
    print(
        json.dumps(
            {
                "label_set": resources["training"].label_set,
                "text_encoders": resources["training"].text_encoders,
                "chain_wall_s": round(chain_wall, 1),
                "per_asset_s": wall,
                "ingest_wall_s_excluded": round(ingest_wall, 1),
                "throughput": throughput,
                "models": results,
                "stack": stack_figures,
                "champion": metadata["model_comparison"]["decision"],
                "predict_latency": latency,
                "targets": targets,
            }
        )
    )


if __name__ == "__main__":
    main()
