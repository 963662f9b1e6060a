"""Model assets: cached embeddings, the TF-IDF baseline, text, image and fusion models, the stacked
classifier, and the champion.

Every training asset logs one MLflow run with a deployable pyfunc model (the image-only model
excepted: it cannot predict without a poster); model_comparison registers the best candidate on
validation as genre-classifier@champion when it beats the current champion. The assets only wire:
config in, one call into ``genre_pipeline.training`` or ``genre_pipeline.models``, metadata out.
"""

import json

import dagster as dg
import pandas as pd
from mlflow import MlflowClient
from pydantic import Field

from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import (
    config_from_dataclass,
    markdown_images,
    markdown_table,
    progress_logger,
    to_dataclass,
)
from genre_pipeline.defs.dataset import dataset_splits, genre_labels, movies_clean
from genre_pipeline.defs.execution import GPU_STEP_TAGS
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models import metrics, promotion, registry
from genre_pipeline.models.encoders import EncoderUnavailable, cache
from genre_pipeline.store import frame_fingerprint
from genre_pipeline.training import runs
from genre_pipeline.training.config import BaselineConfig, FineTuneConfig, StackConfig, TrainingConfig

MODEL_ASSETS = ("baseline_model", "text_model", "image_model", "fusion_model", "stacked_model")


class EmbeddingConfig(dg.Config):
    batch_size: int = Field(default=64, description="Texts per batch on PyTorch; posters use half as many.")


HeadTrainingConfig = config_from_dataclass(TrainingConfig, "HeadTrainingConfig")
# A head asset's config: how the head trains on cached embeddings, and under fine_tuning how it trains
# with its encoders when the training resource fine-tunes.
HeadConfig = config_from_dataclass(
    TrainingConfig, "HeadConfig", fine_tuning=config_from_dataclass(FineTuneConfig, "FineTuningConfig")
)
BaselineAssetConfig = config_from_dataclass(BaselineConfig, "BaselineAssetConfig")
StackAssetConfig = config_from_dataclass(StackConfig, "StackAssetConfig", heads=HeadTrainingConfig)
PromotionConfig = config_from_dataclass(registry.PromotionRules, "PromotionConfig")


def _failing_clearly(call):
    """``call()``; an encoder whose weights cannot load fails the step at once (a retry cannot help)."""
    try:
        return call()
    except EncoderUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from None


# The two embedding assets: frozen encoders over the clean movies, on a GPU worker where there is one.
embedding_asset = dg.asset(
    group_name="models",
    deps=[movies_clean],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"pytorch"},
    op_tags=GPU_STEP_TAGS,
)


def _embedding_result(per_encoder: list[dict]) -> dg.MaterializeResult:
    """One encoder's figures as they are; several encoders' side by side in a table."""
    version = "".join(frame_fingerprint(pd.DataFrame({"k": m.pop("keys")})) for m in per_encoder)
    metadata = (
        dict(per_encoder[0]) if len(per_encoder) == 1 else {"encoders": markdown_table(pd.DataFrame(per_encoder))}
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def _refresh_embeddings(context, storage, training, ref, batch_size: int, ids: list, keys: list, inputs: list) -> dict:
    store = storage.store
    return _failing_clearly(
        lambda: cache.refresh(
            store.embeddings_file(ref.modality, ref.name, ref.backend),
            ref,
            device=training.resolved_device(),
            batch_size=batch_size,
            ids=ids,
            keys=keys,
            inputs=inputs,
            progress=progress_logger(context, f"{ref.modality} embeddings ({ref.name}, {ref.backend})"),
        )
    )


@embedding_asset
def text_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen text-encoder embeddings of each movie's model text, for every configured text encoder;
    only new or changed texts are encoded."""
    movies = storage.store.read_table(storage.store.movies_clean_file)
    texts = movies["text"].tolist()
    keys = [cache.content_key(t) for t in texts]
    ids = movies["id"].tolist()
    return _embedding_result(
        [
            _refresh_embeddings(context, storage, training, ref, config.batch_size, ids, keys, texts)
            for ref in training.encoder_refs()[0]
        ]
    )


@embedding_asset
def poster_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen ImageNet features of every verified poster; only new or changed posters are encoded."""
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    with_poster = movies[movies["poster_status"] == poster_files.OK]
    files = [store.root / f for f in with_poster["poster_file"]]
    keys = [cache.content_key(f.read_bytes()) for f in files]
    ref = training.encoder_refs()[1]
    return _embedding_result(
        [
            _refresh_embeddings(
                context, storage, training, ref, config.batch_size // 2, with_poster["id"].tolist(), keys, files
            )
        ]
    )


def _model_result(trained: runs.TrainedModel, **more) -> dg.MaterializeResult:
    """A trained model's asset metadata: its MLflow run, test figures, per-genre table and plots."""
    outcome, report, files = trained.outcome, trained.report, trained.files
    summary = outcome.test["summary"]
    per_genre = outcome.test["per_genre"][["genre", "support", "predicted", "precision", "recall", "f1", "roc_auc"]]
    plots = markdown_images({"F1 per genre (test)": files["f1_per_genre"], "ROC per genre (test)": files["roc_curves"]})
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": report["run_id"],
            "mlflow_run": dg.MetadataValue.url(
                f"http://127.0.0.1:5000/#/experiments/{report['experiment_id']}/runs/{report['run_id']}"
            ),
            "label_set": trained.label_set,
            registry.VALIDATION_METRIC: round(outcome.validation_macro_f1, 4),
            **{f"test_{k}": round(v, 4) for k, v in summary.items() if k != "n_movies"},
            "test_movies": summary["n_movies"],
            "test_top3_rule_macro_f1": round(outcome.test_top3_rule["summary"]["macro_f1"], 4),
            **{f"test_{s}_macro_f1": round(v["macro_f1"], 4) for s, v in outcome.test_subsets.items()},
            **{k: round(v, 4) for k, v in outcome.extra.items() if isinstance(v, float)},
            "best_epoch": outcome.best_epoch or 0,
            "per_genre": markdown_table(per_genre, None),
            "plots": plots,
            **more,
        }
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
    deps=[movies_clean, genre_labels, dataset_splits],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
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
    trained = runs.baseline_model(
        store, training.setup(store), to_dataclass(BaselineConfig, config), _run_tags(context)
    )
    return _model_result(trained)


def _head_model_asset(name: str, kind: str, deps: list, description: str) -> dg.AssetsDefinition:
    """text_model, image_model and fusion_model differ only in their features."""

    @dg.asset(
        name=name,
        description=description,
        group_name="models",
        deps=[*deps, genre_labels, dataset_splits],
        automation_condition=ON_UPSTREAM_DATA_CHANGE,
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
        trained = _failing_clearly(
            lambda: runs.head_model(
                store,
                setup,
                name,
                kind,
                to_dataclass(TrainingConfig, config),
                to_dataclass(FineTuneConfig, config.fine_tuning),
                _run_tags(context),
                _epoch_logger(context),
            )
        )
        if kind == "fusion":
            scores = trained.outcome.extra["fusion_validation_macro_f1"]
            context.log.info(f"fusion heads on validation: {scores}; kept {trained.outcome.kind}")
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
    deps=[text_embeddings, poster_embeddings, genre_labels, dataset_splits],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
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
    trained = runs.stacked_model(
        store,
        training.setup(store),
        to_dataclass(StackConfig, config),
        to_dataclass(TrainingConfig, config.heads),
        _run_tags(context),
        progress=context.log.info,
    )
    members = pd.DataFrame([{"member": name, **scores} for name, scores in trained.outcome.extra["members"].items()])
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
    current genre-classifier@champion are both scored now on the current validation split, and the
    candidate becomes the champion only when it beats the champion there (by more than the margin)."""
    store = storage.store
    reports = {name: json.loads(store.model_report_file(name).read_text()) for name in MODEL_ASSETS}
    rows = []
    for name, report in reports.items():
        test = report["test"]
        rows.append(
            {
                "model": name,
                "kind": report["kind"],
                "candidate": name in registry.CHAMPION_CANDIDATES,
                registry.VALIDATION_METRIC: report["validation_macro_f1"],
                **{k: test[k] for k in metrics.HEADLINE_KEYS},
                "macro_f1_top3_rule": report["test_top3_rule"]["macro_f1"],
                "macro_f1_with_poster": report["test_subsets"].get("with_poster", {}).get("macro_f1"),
                "test_movies": report["n_test"],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(store.model_comparison_file, index=False)
    name = registry.choose_candidate({n: report["validation_macro_f1"] for n, report in reports.items()})
    chosen = reports[name]
    registry.use_tracking(chosen["tracking_uri"], training.experiment, store.mlflow_artifacts_dir)
    outcome = promotion.challenge_champion(
        store, name, chosen, training.label_set, to_dataclass(registry.PromotionRules, config)
    )
    context.log.info(outcome.decision)
    before = outcome.champion_before
    champion = registry.current_champion(MlflowClient())
    return dg.MaterializeResult(
        metadata={
            "comparison": markdown_table(table, None),
            "candidate": name,
            "candidate_validation_macro_f1": outcome.candidate.macro_f1,
            "champion_before": f"v{before['version']} ({before['tags'].get('model')})" if before else "none",
            "champion_before_validation_macro_f1": outcome.champion_f1,
            "compared_on": outcome.data,
            "promoted": outcome.promoted,
            "decision": outcome.decision,
            "label_set": training.label_set,
            "champion_version": champion["version"],
        },
        # What downstream assets read of this one is the champion: they rerun only when it changes.
        data_version=dg.DataVersion(f"champion-v{champion['version']}-{champion['run_id']}"),
    )
