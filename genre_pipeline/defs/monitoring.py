"""Monitoring assets: the serving champion scored on the movies each refresh brings (before any model
trains on them), drift checks on those movies, and the gate that retrains the models only when it pays."""

import dagster as dg
import pandas as pd
from mlflow import MlflowClient

from genre_pipeline import tracking
from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.scoring import reusing_store_embeddings, store_embeddings
from genre_pipeline.champion.seen import training_movies
from genre_pipeline.defs.automation import DOWNSTREAM_FRESHNESS, ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import markdown_table
from genre_pipeline.defs.dataset import dataset_splits, genre_labels, movies_clean
from genre_pipeline.defs.embeddings import text_embeddings
from genre_pipeline.defs.resources import MonitoringResource, StorageResource, TrainingResource
from genre_pipeline.monitoring import new_movies, retraining
from genre_pipeline.monitoring.drift import DriftThresholds
from genre_pipeline.store import content_fingerprint
from genre_pipeline.training.fingerprint import training_code_fingerprint

DRIFT_FIGURES = tuple(name for name in DriftThresholds.__dataclass_fields__ if name != "min_new_movies")


@dg.asset(
    group_name="monitoring",
    deps=[movies_clean, genre_labels, text_embeddings],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    freshness_policy=DOWNSTREAM_FRESHNESS,
    kinds={"mlflow"},
)
def champion_on_new_movies(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    training: TrainingResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """The serving genre-classifier@champion scored on the labelled movies it never saw (none of its
    training run's splits): macro-F1 with a 95% bootstrap interval, micro-F1 and per genre, plotted over
    the materializations and logged to MLflow against the champion's version; and drift between those
    movies and its training movies, which the drift checks judge."""
    store = storage.store
    uri = training.tracking_uri_for(store)
    tracking.use_store(uri)
    champion = registry.current_champion(MlflowClient())
    seen = training_movies(champion["run_id"]) if champion else None
    if seen is None:
        why = (
            "no champion yet"
            if champion is None
            else f"champion v{champion['version']} has no recorded training movies"
        )
        new_movies.NewMoviesRecord.unscored(why).save(store)
        return dg.MaterializeResult(
            metadata={"champion": why, "new_movies": 0}, data_version=dg.DataVersion(content_fingerprint(why))
        )
    predictor = reusing_store_embeddings(
        GenrePredictor.from_registry(uri, champion["version"]), store_embeddings(store)
    )
    text_ref = training.encoder_refs()[0][0]
    report = new_movies.report_new_movies(
        store,
        predictor,
        seen,
        store.embeddings_file("text", text_ref.name, text_ref.backend),
        monitoring.thresholds(),
        resamples=monitoring.bootstrap_resamples,
    )
    report.record().save(store)
    name = f"{registry.REGISTERED_MODEL} v{champion['version']} ({predictor.info['model']})"
    metadata = {
        "champion": name,
        "champion_version": int(champion["version"]),
        # This asset runs before any model trains on the new movies, so before champion_model.
        "scored": "the champion serving when this ran, before this run's promotion (if any)",
        "new_movies": len(report.new_ids),
    }
    if report.score is not None:
        summary = report.score.summary()
        metadata |= {
            "prequential_macro_f1": summary["macro_f1"],
            "prequential_macro_f1_low": summary["macro_f1_low"],
            "prequential_macro_f1_high": summary["macro_f1_high"],
            "prequential_micro_f1": summary["micro_f1"],
            "per_genre": markdown_table(report.score.per_genre, None),
            "drift": markdown_table(pd.DataFrame([f.as_dict() for f in report.drift]), None),
            "mlflow_run_id": new_movies.log_report(
                report, predictor, training.experiment, {"dagster_run_id": context.run.run_id}
            ),
        }
        context.log.info(
            f"{name} on {len(report.new_ids)} new movies: macro-F1 {summary['macro_f1']:.4f} "
            f"[{summary['macro_f1_low']:.4f}, {summary['macro_f1_high']:.4f}]"
        )
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(content_fingerprint([champion["version"], report.new_ids.tolist()])),
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name=f"drift_{name}", asset=champion_on_new_movies, description=field.metadata["description"])
        for name, field in DriftThresholds.__dataclass_fields__.items()
        if name in DRIFT_FIGURES
    ]
)
def drift_checks(storage: StorageResource):
    """Each drift figure of the champion's new movies against its threshold (MonitoringResource.drift): a
    warning, never a stop; docs/refresh.md says what each means and what to do."""
    record = new_movies.NewMoviesRecord.load(storage.store)
    figures = {figure.name: figure for figure in record.drift}
    for name in DRIFT_FIGURES:
        figure = figures.get(name)
        if figure is None:
            yield dg.AssetCheckResult(
                check_name=f"drift_{name}",
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"judged": False, "detail": record.not_scored or "no new movies to compare"},
            )
            continue
        yield dg.AssetCheckResult(
            check_name=f"drift_{name}",
            passed=figure.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "value": figure.value if figure.judged else dg.MetadataValue.text("not judged"),
                "threshold": figure.threshold,
                "judged": figure.judged,
                "detail": figure.detail,
            },
        )


@dg.asset(
    group_name="monitoring",
    deps=[champion_on_new_movies, genre_labels, dataset_splits],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"python"},
)
def retraining_decision(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    training: TrainingResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    """Whether the models retrain on this refresh's data: enough new labelled movies since they last
    trained, a drift check newly failed, or a change of the training setup or code. Its data version
    changes only when they retrain, so that the model assets follow it and nothing else."""
    store = storage.store
    labelled = set(store.read_table(store.labels_file(training.label_set))["id"].astype(int).tolist())
    setup = retraining.setup_fingerprint(training.setup(store).run_params(), training_code_fingerprint())
    gate = retraining.retraining_gate(store, labelled, setup, monitoring.rules())
    context.log.info(gate.decision.text)
    return dg.MaterializeResult(
        metadata={
            "retrain": gate.decision.retrain,
            "decision": gate.decision.text,
            "new_labelled": gate.new_labelled,
            "trained_on": gate.trained_on,
        },
        data_version=dg.DataVersion(gate.state.version),
    )
