"""Model assets: the TF-IDF baseline, text, image and fusion models, the stacked classifier, the
comparison of the best candidate with the champion, and the champion.

Every training asset logs one MLflow run with a deployable pyfunc model (the image-only model
excepted: it cannot predict without a poster). They retrain when retraining_decision says it pays, not
on every refreshed movie; a model whose data, config, setup and training code are those of its last
training is reused ("reused" in its metadata, no new MLflow run) unless the training resource says
retrain. model_comparison registers the best candidate on validation as
genre-classifier@challenger with its and the champion's figures on the same movies; the blocking check
challenger_beats_champion and champion_model decide whether @champion moves. The assets only wire:
config in, one call into ``genre_pipeline.training`` or ``genre_pipeline.models``, metadata out.
"""

import json
import math
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd
from mlflow import MlflowClient

from genre_pipeline import tracking
from genre_pipeline.champion import promotion, registry
from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE, when_dep_data_changes
from genre_pipeline.defs.common import (
    config_from_dataclass,
    failing_clearly,
    markdown_images,
    markdown_table,
    to_dataclass,
)
from genre_pipeline.defs.dataset import dataset_splits, genre_labels, movies_clean
from genre_pipeline.defs.embeddings import poster_embeddings, text_embeddings
from genre_pipeline.defs.execution import GPU_STEP_TAGS
from genre_pipeline.defs.monitoring import retraining_decision
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.files import atomic_write_bytes
from genre_pipeline.models import metrics
from genre_pipeline.training import manifest
from genre_pipeline.training.config import BaselineConfig, FineTuneConfig, StackConfig, TrainingConfig

if TYPE_CHECKING:
    from genre_pipeline.training.runs import TrainedModel

# What a model's metadata says of its temporal evaluation besides the figures: which years, how many
# movies, which genres had none, or why it was not measured.
TEMPORAL_DESCRIPTION = (
    "temporal_test_years",
    "temporal_test_movies",
    "temporal_test_genres_without_positive",
    "temporal_test_not_measured",
)
# The report's figures beside the test split's: the temporal split's, the stack's variants'.
EXTRA_FIGURES = ("temporal_", "test_macro_f1_", "validation_macro_f1_")
MODEL_ASSETS = manifest.MODELS
WHEN_RETRAINING_PAYS = when_dep_data_changes(retraining_decision.key.to_user_string(), "when_retraining_pays")


HeadTrainingConfig = config_from_dataclass(TrainingConfig, "HeadTrainingConfig")
# A head asset's config: how the head trains on cached embeddings, and under fine_tuning how it trains
# with its encoders when the training resource fine-tunes.
HeadConfig = config_from_dataclass(
    TrainingConfig, "HeadConfig", fine_tuning=config_from_dataclass(FineTuneConfig, "FineTuningConfig")
)
BaselineAssetConfig = config_from_dataclass(BaselineConfig, "BaselineAssetConfig")
StackAssetConfig = config_from_dataclass(StackConfig, "StackAssetConfig", heads=HeadTrainingConfig)
PromotionConfig = config_from_dataclass(promotion.PromotionRules, "PromotionConfig")


def _mlflow_run_url(experiment_id: str, run_id: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")


def _training():
    """The training code, imported when a model trains rather than when the code location loads:
    PyTorch and torchvision are seconds of every `dagster` process's start-up (dev, the daemon, each run)."""
    from genre_pipeline.training import runs

    return runs


def _model_result(trained: "TrainedModel", **more) -> dg.MaterializeResult:
    """A trained model's asset metadata, from its report: its MLflow run, test figures, per-genre table
    and plots, and whether it was reused. Its data version is its MLflow run: a reused model's does not
    change, so nothing downstream reruns for it."""
    report, files = trained.report, trained.files
    summary = report["test"]
    per_genre = trained.per_genre[["genre", "support", "predicted", "precision", "recall", "f1", "roc_auc"]]
    plots = markdown_images({"F1 per genre (test)": files["f1_per_genre"], "ROC per genre (test)": files["roc_curves"]})
    figures = {k: v for k, v in report.items() if k.startswith(EXTRA_FIGURES) and isinstance(v, float)}
    return dg.MaterializeResult(
        metadata={
            "reused": trained.reused or "no: trained now",
            "mlflow_run_id": report["run_id"],
            "mlflow_run": _mlflow_run_url(report["experiment_id"], report["run_id"]),
            "label_set": trained.label_set,
            tracking.VALIDATION_METRIC: round(report["validation_macro_f1"], 4),
            **{f"test_{k}": round(v, 4) for k, v in summary.items() if isinstance(v, float)},
            "test_movies": summary["n_movies"],
            "test_top3_rule_macro_f1": round(report["test_top3_rule"]["macro_f1"], 4),
            # A subset figure that does not apply (the poster model has no movie without a poster) is left out.
            **{
                f"test_{s}_macro_f1": round(v["macro_f1"], 4)
                for s, v in report["test_subsets"].items()
                if not math.isnan(v["macro_f1"])
            },
            **{k: round(v, 4) for k, v in figures.items()},
            **{k: report[k] for k in TEMPORAL_DESCRIPTION if k in report},
            **({"best_epoch": report["best_epoch"]} if report.get("best_epoch") else {}),
            "per_genre": markdown_table(per_genre, None),
            "plots": plots,
            **more,
        },
        data_version=dg.DataVersion(report["run_id"]),
    )


def _run_tags(context) -> dict:
    return {"dagster_run_id": context.run.run_id}


def _epoch_logger(context):
    def log(kind: str, record: dict) -> None:
        if record["epoch"] % 5 == 0 or record["epoch"] == 1:
            context.log.info(
                f"{kind} epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
                f"validation loss {record['validation_loss']:.4f}, "
                f"macro-F1 at 0.5 {record['epoch_validation_macro_f1']:.4f}"
            )

    return log


@dg.asset(
    group_name="models",
    deps=[movies_clean, genre_labels, dataset_splits, retraining_decision],
    automation_condition=WHEN_RETRAINING_PAYS,
    kinds={"scikit-learn", "mlflow"},
)
def baseline_model(
    context: dg.AssetExecutionContext,
    config: BaselineAssetConfig,
    storage: StorageResource,
    training: TrainingResource,
) -> dg.MaterializeResult:
    """Word and character TF-IDF + one logistic regression per genre: the reference every other model
    must beat, and a member of the stack."""
    store = storage.store
    trained = failing_clearly(
        lambda: _training().baseline_model(
            store, training.setup(store), to_dataclass(BaselineConfig, config), _run_tags(context)
        ),
        store,
    )
    return _model_result(trained)


def _head_model_asset(name: str, kind: str, deps: list, description: str) -> dg.AssetsDefinition:
    """text_model, image_model and fusion_model differ only in their features."""

    @dg.asset(
        name=name,
        description=description,
        group_name="models",
        deps=[*deps, genre_labels, dataset_splits, retraining_decision],
        automation_condition=WHEN_RETRAINING_PAYS,
        kinds={"pytorch", "mlflow"},
        op_tags=GPU_STEP_TAGS,
    )
    def head_model(
        context: dg.AssetExecutionContext, config: HeadConfig, storage: StorageResource, training: TrainingResource
    ) -> dg.MaterializeResult:
        store = storage.store
        setup = training.setup(store)
        how = "fine-tuning the encoders with" if setup.fine_tune else "training"
        context.log.info(f"{how} the {kind} head on {setup.device}")
        trained = failing_clearly(
            lambda: _training().head_model(
                store,
                setup,
                name,
                kind,
                to_dataclass(TrainingConfig, config),
                to_dataclass(FineTuneConfig, config.fine_tuning),
                _run_tags(context),
                _epoch_logger(context),
            ),
            store,
        )
        if trained.reused:
            context.log.info(f"reused: {trained.reused}")
        elif kind == "fusion":
            scores = trained.report["fusion_validation_macro_f1"]
            context.log.info(f"fusion heads on validation: {scores}; kept {trained.report['kind']}")
        return _model_result(trained)

    return head_model


text_model = _head_model_asset(
    "text_model",
    "text",
    [text_embeddings],
    "The original study's text head (Linear 128, ReLU, Dropout, Linear) on the first text encoder.",
)
image_model = _head_model_asset(
    "image_model", "image", [poster_embeddings], "Poster only, on movies with a verified poster: for the comparison."
)
fusion_model = _head_model_asset(
    "fusion_model",
    "fusion",
    [text_embeddings, poster_embeddings],
    "Concatenation fusion and a gated multimodal unit; the better on validation. Predicts without posters too.",
)


@dg.asset(
    group_name="models",
    deps=[text_embeddings, poster_embeddings, genre_labels, dataset_splits, retraining_decision],
    automation_condition=WHEN_RETRAINING_PAYS,
    kinds={"scikit-learn", "pytorch", "mlflow"},
    op_tags=GPU_STEP_TAGS,
)
def stacked_model(
    context: dg.AssetExecutionContext,
    config: StackAssetConfig,
    storage: StorageResource,
    training: TrainingResource,
) -> dg.MaterializeResult:
    """The product's model: TF-IDF (text, and title with text), per text encoder a trained head, a
    nearest-neighbour vote and a linear model, and the poster head, cross-fitted on train; per genre,
    gradient-boosted trees over their out-of-fold probabilities and the TMDb metadata. One pyfunc model
    from raw inputs to genres; movies without a usable poster or metadata are scored from the rest."""
    store = storage.store
    trained = failing_clearly(
        lambda: _training().stacked_model(
            store,
            training.setup(store),
            to_dataclass(StackConfig, config),
            to_dataclass(TrainingConfig, config.heads),
            _run_tags(context),
            progress=context.log.info,
        ),
        store,
    )
    members = pd.DataFrame([{"member": name, **scores} for name, scores in trained.report["members"].items()])
    return _model_result(trained, members=markdown_table(members, None))


@dg.asset(
    group_name="models",
    deps=[baseline_model, text_model, image_model, fusion_model, stacked_model],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"mlflow"},
)
def model_comparison(
    context: dg.AssetExecutionContext, config: PromotionConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Every model's test metrics side by side; the candidate with the best validation macro-F1 and the
    current genre-classifier@champion both scored now on the current validation split (and on the test
    split's movies the champion never saw); the candidate registered as @challenger with both figures.
    Whether it becomes the champion is the blocking check challenger_beats_champion's verdict."""
    store = storage.store
    damaged = {name: why for name in MODEL_ASSETS if (why := manifest.damage(store, name))}
    if damaged:  # the sensor, or the next refresh, trains them again
        raise dg.Failure(
            "not compared: "
            + "; ".join(damaged.values())
            + f". damaged_files_sensor materializes {', '.join(damaged)} "
            "again (or the next python -m genre_pipeline.refresh)",
            allow_retries=False,
        )
    reports = {name: json.loads(store.model_report_file(name).read_text()) for name in MODEL_ASSETS}
    rows = []
    for name, report in reports.items():
        test = report["test"]
        with_poster = report["test_subsets"].get("with_poster", {}).get("macro_f1")
        if report["kind"] == "image":  # scored only on movies with a poster: both figures are one
            with_poster = test["macro_f1"]
        rows.append(
            {
                "model": name,
                "kind": report["kind"],
                "candidate": name in registry.CHAMPION_CANDIDATES,
                tracking.VALIDATION_METRIC: report["validation_macro_f1"],
                **{k: test[k] for k in metrics.HEADLINE_KEYS},
                "macro_f1_top3_rule": report["test_top3_rule"]["macro_f1"],
                # Trained on the older movies, scored on the newest years: what to expect on new movies.
                "temporal_macro_f1": report.get("temporal_test_macro_f1"),
                "macro_f1_with_poster": with_poster,
                "test_movies": report["n_test"],
            }
        )
    table = pd.DataFrame(rows)
    atomic_write_bytes(store.model_comparison_file, table.to_csv(index=False).encode())
    name = registry.choose_candidate({n: report["validation_macro_f1"] for n, report in reports.items()})
    chosen = reports[name]
    tracking.use_tracking(chosen["tracking_uri"], training.experiment, store.mlflow_artifacts_dir)
    challenge = failing_clearly(
        lambda: promotion.challenge_champion(
            store, name, chosen, training.label_set, to_dataclass(promotion.PromotionRules, config)
        ),
        store,
    )
    context.log.info(challenge.decision)
    figures = {}
    comparison = challenge.comparison
    if comparison is not None:
        figures = {
            "challenger": f"v{challenge.challenger_version} ({name})",
            "compared_on": comparison.data,
            "challenger_validation_macro_f1": round(comparison.candidate_f1, 4),
            "champion_before": comparison.champion_name() if comparison.champion_version else "none",
        }
        if comparison.champion_f1 is not None:
            figures["champion_validation_macro_f1"] = round(comparison.champion_f1, 4)
        if comparison.candidate_new_f1 is not None:
            figures |= {
                "new_test_movies": comparison.new_movies,
                "challenger_new_test_macro_f1": round(comparison.candidate_new_f1, 4),
                "champion_new_test_macro_f1": round(comparison.champion_new_f1, 4),
            }
    return dg.MaterializeResult(
        metadata={
            "comparison": markdown_table(table, None),
            "candidate": name,
            "candidate_mlflow_run": _mlflow_run_url(chosen["experiment_id"], chosen["run_id"]),
            **figures,
            "decision": challenge.decision,
            "label_set": training.label_set,
        },
        data_version=dg.DataVersion(f"challenger-v{challenge.challenger_version}-{chosen['run_id']}"),
    )


@dg.asset_check(
    asset=model_comparison,
    name=promotion.PROMOTION_CHECK,
    blocking=True,
    description="The challenger scored more than the champion's macro-F1 plus the margin, both measured now on "
    "the same validation movies. A challenger that lost is a warning (the champion is kept, champion_model and "
    "the predictions run); a comparison with a champion that has moved since is an error that stops the run.",
)
def challenger_beats_champion(storage: StorageResource, training: TrainingResource) -> dg.AssetCheckResult:
    tracking.use_store(training.tracking_uri_for(storage.store))
    verdict = promotion.challenger_verdict(MlflowClient())
    challenger = verdict.challenger
    return dg.AssetCheckResult(
        passed=verdict.promote or challenger is None,
        severity=dg.AssetCheckSeverity.ERROR if verdict.failure else dg.AssetCheckSeverity.WARN,
        description=verdict.decision,
        metadata={"challenger": f"v{challenger['version']}" if challenger else "none", "decision": verdict.decision},
    )


@dg.asset(
    group_name="models",
    deps=[model_comparison],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"mlflow"},
)
def champion_model(storage: StorageResource, training: TrainingResource) -> dg.MaterializeResult:
    """genre-classifier@champion, the model `genre-pipeline serve`, `predict` and genre_predictions use:
    moved to the challenger only when the promotion rule allows it (the check before it says so too).
    A kept champion is a success: "kept vN" with both figures; @challenger is removed either way."""
    tracking.use_store(training.tracking_uri_for(storage.store))
    client = MlflowClient()
    promoted, decision = promotion.promote_challenger(client)
    champion = registry.current_champion(client)
    if champion is None:
        raise dg.Failure(f"no {registry.REGISTERED_MODEL}@{registry.CHAMPION_ALIAS}: {decision}", allow_retries=False)
    run = client.get_run(champion["run_id"])
    outcome = "promoted" if promoted else "kept"
    return dg.MaterializeResult(
        metadata={
            "outcome": f"{outcome} v{champion['version']}",
            "champion": f"{registry.REGISTERED_MODEL} v{champion['version']} ({champion['tags'].get('model')})",
            "champion_version": int(champion["version"]),
            "promoted": promoted,
            "decision": decision,
            "champion_mlflow_run": _mlflow_run_url(run.info.experiment_id, champion["run_id"]),
        },
        # What downstream assets read of this one is the champion: they rerun only when it changes.
        data_version=dg.DataVersion(f"champion-v{champion['version']}-{champion['run_id']}"),
    )
