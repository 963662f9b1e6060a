"""Batch predictions: the champion labels the ingested movies TMDb gives no genre."""

import dagster as dg
import numpy as np
from pydantic import Field

from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.scoring import (
    LABELLED_CHECK,
    PREDICTION_COLUMNS,
    UNLABELLED,
    labels_for,
    movies_to_score,
    predict_movies,
    prediction_table,
    reusing_store_embeddings,
    store_embeddings,
)
from genre_pipeline.defs.automation import DOWNSTREAM_FRESHNESS, ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import markdown_table, progress_logger
from genre_pipeline.defs.dataset import dataset_splits
from genre_pipeline.defs.ingestion import movie_details, posters
from genre_pipeline.defs.models import champion_model
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models import metrics
from genre_pipeline.store import frame_fingerprint


class PredictionConfig(dg.Config):
    check_sample: int = Field(
        default=200,
        ge=0,
        description="Labelled test-split movies scored beside the unlabelled ones, as a check of the model.",
    )
    seed: int = 0


@dg.asset(
    group_name="predictions",
    deps=[movie_details, posters, dataset_splits, champion_model],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    freshness_policy=DOWNSTREAM_FRESHNESS,
    kinds={"mlflow", "pandas"},
)
def genre_predictions(
    context: dg.AssetExecutionContext, config: PredictionConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """The champion's genres for every ingested movie TMDb gives none, and for a sample of labelled
    test-split movies as a check, with the champion version that answered; reruns when the champion or
    the movies change."""
    store = storage.store
    predictor = reusing_store_embeddings(
        GenrePredictor.from_registry(training.tracking_uri_for(store)), store_embeddings(store)
    )
    details = store.read_details()
    splits = store.read_table(store.splits_file)
    movies, scored_as = movies_to_score(
        details, splits.loc[splits["split"] == "test", "id"].tolist(), config.check_sample, config.seed
    )
    status = poster_files.read_statuses(store)
    ok = status[status["status"] == poster_files.OK]
    files = {int(i): store.root / f for i, f in zip(ok["id"], ok["file"])}
    output = predict_movies(predictor, movies, files, progress=progress_logger(context, "scored"))
    table = prediction_table(predictor, movies, scored_as, output)
    store.write_table(store.genre_predictions_file, table)

    metadata = {
        "champion": f"{registry.REGISTERED_MODEL} v{predictor.info['version']} ({predictor.info['model']})",
        "unlabelled_movies": int((table["scored_as"] == UNLABELLED).sum()),
        "check_movies": int((table["scored_as"] == LABELLED_CHECK).sum()),
        "with_poster": int(table["used_poster"].sum()),
        "path": str(store.genre_predictions_file),
        "dagster/row_count": len(table),
    }
    known = {g["name"] for g in store.read_json(store.tmdb_genres_file, {}).get("genres", [])}
    check = (table["scored_as"] == LABELLED_CHECK).to_numpy().copy()
    y_true = np.zeros((len(table), len(predictor.classes)), dtype=np.uint8)
    for row in np.flatnonzero(check):
        y_true[row] = labels_for(list(table["tmdb_genres"].iloc[row]), predictor.classes, known)
    check &= y_true.any(axis=1)  # a movie whose genres all fall outside the label set cannot be scored
    if check.any():
        report = metrics.evaluate(
            y_true[check], output.decisions[check], output.probabilities[check], predictor.classes
        )
        metadata |= {f"check_{k}": float(report["summary"][k]) for k in ("macro_f1", "micro_f1", "samples_f1")}
    # Every column of the parquet file but the per-genre probabilities (top_3 shows the highest).
    shown = table[[*PREDICTION_COLUMNS, "champion_version", "champion_model", "champion_run_id"]]
    metadata["preview"] = markdown_table(
        shown.assign(
            predicted_genres=shown["predicted_genres"].map(", ".join), tmdb_genres=shown["tmdb_genres"].map(", ".join)
        ),
        25,
    )
    context.log.info(f"scored {len(table)} movies with {metadata['champion']}")
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(frame_fingerprint(table)),
    )
