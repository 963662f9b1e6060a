"""Model assets: cached embeddings, the TF-IDF baseline, text, image and fusion models, the stacked
classifier, and the champion.

Every training asset logs one MLflow run with a deployable pyfunc model (the image-only model
excepted: it cannot predict without a poster); model_comparison registers the best candidate on
validation as genre-classifier@champion when it beats the current champion.
"""

import json

import dagster as dg
import pandas as pd
from mlflow import MlflowClient
from pydantic import Field

from genre_pipeline.dataset.labels import LabelSet
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
from genre_pipeline.models import finetune, genre_models, metrics, tracking
from genre_pipeline.models.embeddings import Embeddings, content_key, update_embeddings
from genre_pipeline.models.encoders import EncoderUnavailable, ImageEncoder, TextEncoder
from genre_pipeline.models.finetune import FineTuneConfig
from genre_pipeline.models.members import EncoderRef
from genre_pipeline.models.training import TrainingConfig
from genre_pipeline.store import DataStore, frame_fingerprint

MODEL_ASSETS = ("baseline_model", "text_model", "image_model", "fusion_model", "stacked_model")
# What can be the champion: every model that predicts from an overview alone (not the poster-only one).
CHAMPION_CANDIDATES = ("baseline_model", "text_model", "fusion_model", "stacked_model")


class EmbeddingConfig(dg.Config):
    batch_size: int = 64


HeadTrainingConfig = config_from_dataclass(TrainingConfig, "HeadTrainingConfig")
# A head asset's config: how the head trains on cached embeddings, and under fine_tuning how it trains
# with its encoders when the training resource fine-tunes.
HeadConfig = config_from_dataclass(
    TrainingConfig, "HeadConfig", fine_tuning=config_from_dataclass(FineTuneConfig, "FineTuningConfig")
)


class BaselineConfig(dg.Config):
    C: float = Field(default=4.0, description="Inverse regularization of the logistic regressions.")
    seed: int = 42


def _throughput(stats, encoder) -> dict:
    """Embeddings per second beside the encoder's forward pass alone, both from this run."""
    if not stats.computed or encoder is None or not encoder.forward_seconds:
        return {}
    raw = stats.computed / encoder.forward_seconds
    return {"raw_forward_per_s": round(raw, 1), "throughput_ratio": round(stats.per_second / raw, 3)}


def _load_encoder(make_encoder):
    try:
        return make_encoder()
    except EncoderUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from None


def _embed(
    context,
    store: DataStore,
    modality: str,
    encoder_name: str,
    backend: str,
    make_encoder,
    ids: list,
    keys: list,
    inputs: list,
) -> dict:
    """Embeddings cached by (encoder, content key); the encoder loads only if something needs encoding."""
    encoder = None

    def get_encoder():
        nonlocal encoder
        encoder = encoder or _load_encoder(make_encoder)
        return encoder

    progress = progress_logger(context, f"{modality} embeddings ({encoder_name}, {backend})")
    embeddings, stats = update_embeddings(
        store.embeddings_file(modality, encoder_name, backend),
        ids,
        keys,
        inputs,
        lambda batch: get_encoder().encode(batch, progress),
        lambda: get_encoder().dim,
    )
    return {
        "encoder": encoder_name,
        # The backend that encoded this run's new inputs (after any fallback), else the configured one.
        "backend": encoder.backend if encoder is not None else backend,
        "dim": int(embeddings.vectors.shape[1]),
        "embedded": len(ids),
        "computed": stats.computed,
        "reused": stats.reused,
        "encode_s": round(stats.seconds, 2),
        "embeddings_per_s": round(stats.per_second, 1),
        "version": frame_fingerprint(pd.DataFrame({"k": embeddings.keys})),
        **_throughput(stats, encoder),
    }


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
    version = "".join(m.pop("version") for m in per_encoder)
    metadata = (
        dict(per_encoder[0]) if len(per_encoder) == 1 else {"encoders": markdown_table(pd.DataFrame(per_encoder))}
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


@embedding_asset
def text_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen text-encoder embeddings of each movie's model text, for every configured text encoder;
    only new or changed texts are encoded."""
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    texts = movies["text"].tolist()
    keys = [content_key(t) for t in texts]
    return _embedding_result(
        [
            _embed(
                context,
                store,
                "text",
                name,
                training.encoder_backend,
                lambda name=name: TextEncoder(
                    name,
                    batch_size=config.batch_size,
                    device=training.resolved_device(),
                    backend=training.encoder_backend,
                ),
                movies["id"].tolist(),
                keys,
                texts,
            )
            for name in training.text_encoders
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
    return _embedding_result(
        [
            _embed(
                context,
                store,
                "image",
                training.image_encoder,
                training.encoder_backend,
                lambda: ImageEncoder(
                    training.image_encoder,
                    batch_size=config.batch_size // 2,
                    device=training.resolved_device(),
                    backend=training.encoder_backend,
                ),
                with_poster["id"].tolist(),
                [content_key(f.read_bytes()) for f in files],
                files,
            )
        ]
    )


def _training_data(store: DataStore, training: TrainingResource, *, text: bool, image: bool):
    """The label set's movies, with the cached embeddings of the modalities asked for."""
    label_frame = store.read_table(store.labels_file(training.label_set))
    label_set = LabelSet.from_frame(training.label_set, label_frame)
    splits = store.read_table(store.splits_file)
    text_names = training.text_encoders if text else []
    image_names = [training.image_encoder] if image else []
    data = genre_models.assemble(
        store.read_table(store.movies_clean_file),
        label_set,
        splits,
        {name: Embeddings.load(store.embeddings_file("text", name, training.encoder_backend)) for name in text_names},
        {name: Embeddings.load(store.embeddings_file("image", name, training.encoder_backend)) for name in image_names},
        store.root,
    )
    fingerprint = frame_fingerprint(label_frame) + frame_fingerprint(splits)
    return data, fingerprint


def _log_and_report(
    context, outcome, data, store: DataStore, training: TrainingResource, params: dict, fingerprint: str
) -> dg.MaterializeResult:
    """The model's MLflow run and report files; the asset's metadata."""
    tracking_uri = training.tracking_uri_for(store)
    report, files = tracking.log_training_run(
        outcome,
        data,
        store.model_dir(outcome.name),
        {
            **params,
            "model": outcome.name,
            "kind": outcome.kind,
            "label_set": training.label_set,
            "labels": data.classes,
            "text_encoders": training.text_encoders,
            "image_encoder": training.image_encoder,
            "encoder_backend": training.encoder_backend,
            "fine_tuned_encoders": ",".join(finetune.modalities(outcome.fine_tuned)),
            "device": training.resolved_device(),
            "data_fingerprint": fingerprint,
            "code_version": tracking.code_version(),
            "n_train": int(data.rows("train").sum()),
        },
        tracking_uri=tracking_uri,
        experiment=training.experiment,
        artifact_root=store.mlflow_artifacts_dir,
        tags={"dagster_run_id": context.run.run_id},
    )
    summary = outcome.test["summary"]
    per_genre = outcome.test["per_genre"][["genre", "support", "predicted", "precision", "recall", "f1", "roc_auc"]]
    plots = markdown_images({"F1 per genre (test)": files["f1_per_genre"], "ROC per genre (test)": files["roc_curves"]})
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": report["run_id"],
            "mlflow_run": dg.MetadataValue.url(
                f"http://127.0.0.1:5000/#/experiments/{report['experiment_id']}/runs/{report['run_id']}"
            ),
            "label_set": training.label_set,
            tracking.VALIDATION_METRIC: round(outcome.validation_macro_f1, 4),
            **{f"test_{k}": round(v, 4) for k, v in summary.items() if k != "n_movies"},
            "test_movies": summary["n_movies"],
            "test_top3_rule_macro_f1": round(outcome.test_top3_rule["summary"]["macro_f1"], 4),
            **{f"test_{s}_macro_f1": round(v["macro_f1"], 4) for s, v in outcome.test_subsets.items()},
            **{k: round(v, 4) for k, v in outcome.extra.items() if isinstance(v, float)},
            "best_epoch": outcome.best_epoch or 0,
            "per_genre": markdown_table(per_genre, None),
            "plots": plots,
        }
    )


def _epoch_logger(context, label: str = ""):
    def log(record):
        if record["epoch"] % 5 == 0 or record["epoch"] == 1:
            context.log.info(
                f"{label}epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
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
    context: dg.AssetExecutionContext, config: BaselineConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Word and character TF-IDF + one logistic regression per genre: the reference every other model
    must beat, and a member of the stack."""
    store = storage.store
    data, fingerprint = _training_data(store, training, text=False, image=False)
    outcome = genre_models.train_baseline(data, C=config.C, seed=config.seed)
    return _log_and_report(context, outcome, data, store, training, config.model_dump(), fingerprint)


def _fresh_encoders(kind: str, training: TrainingResource) -> tuple:
    """Pretrained encoders for fine-tuning a head of this kind: (text or None, image or None)."""
    options = {"device": training.resolved_device(), "backend": training.encoder_backend}
    return (
        _load_encoder(lambda: TextEncoder(training.text_encoders[0], **options)) if kind != "image" else None,
        _load_encoder(lambda: ImageEncoder(training.image_encoder, **options)) if kind != "text" else None,
    )


def _encoder_refs(kind: str, training: TrainingResource) -> tuple[EncoderRef | None, EncoderRef | None]:
    """The frozen encoders a head of this kind reads: the first text encoder, the image encoder."""
    text = EncoderRef("text", training.text_encoders[0], backend=training.encoder_backend) if kind != "image" else None
    image = EncoderRef("image", training.image_encoder, backend=training.encoder_backend) if kind != "text" else None
    return text, image


def _train_head_asset(
    context, name: str, kind: str, config: HeadConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    store = storage.store
    fine_tune = training.fine_tunes()
    data, fingerprint = _training_data(
        store, training, text=kind != "image" and not fine_tune, image=kind != "text" and not fine_tune
    )
    context.log.info(
        f"{'fine-tuning the encoders with' if fine_tune else 'training'} the {kind} head "
        f"on {training.resolved_device()}"
    )

    def train_kind(head_kind: str, on_epoch):
        if fine_tune:
            return genre_models.train_fine_tuned(
                name,
                head_kind,
                data,
                to_dataclass(FineTuneConfig, config.fine_tuning),
                lambda: _fresh_encoders(head_kind, training),
                on_epoch=on_epoch,
            )
        text, image = _encoder_refs(head_kind, training)
        return genre_models.train_neural(
            name, head_kind, data, to_dataclass(TrainingConfig, config), text, image, on_epoch
        )

    if kind == "fusion":
        outcome, scores = genre_models.train_fusion(
            train_kind, on_epoch=lambda k, r: _epoch_logger(context, f"{k} ")(r)
        )
        context.log.info(f"fusion heads on validation: {scores}; kept {outcome.kind}")
    else:
        outcome = train_kind(kind, _epoch_logger(context))
    return _log_and_report(context, outcome, data, store, training, config.model_dump(), fingerprint)


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
        return _train_head_asset(context, name, kind, config, storage, training)

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


StackAssetConfig = config_from_dataclass(genre_models.StackConfig, "StackAssetConfig", heads=HeadTrainingConfig)


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
    data, fingerprint = _training_data(store, training, text=True, image=True)
    outcome = genre_models.train_stack(
        data,
        to_dataclass(TrainingConfig, config.heads),
        to_dataclass(genre_models.StackConfig, config),
        [EncoderRef("text", name, backend=training.encoder_backend) for name in training.text_encoders],
        EncoderRef("image", training.image_encoder, backend=training.encoder_backend),
        progress=context.log.info,
    )
    members = pd.DataFrame([{"member": name, **scores} for name, scores in outcome.extra["members"].items()])
    result = _log_and_report(context, outcome, data, store, training, config.model_dump(), fingerprint)
    return dg.MaterializeResult(metadata={**result.metadata, "members": markdown_table(members, None)})


@dg.asset(
    group_name="models",
    deps=[baseline_model, text_model, image_model, fusion_model, stacked_model],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"mlflow"},
)
def model_comparison(storage: StorageResource, training: TrainingResource) -> dg.MaterializeResult:
    """Every model's test metrics side by side; the candidate with the best validation macro-F1 becomes
    genre-classifier@champion when it beats the current champion."""
    store = storage.store
    reports = {name: json.loads(store.model_report_file(name).read_text()) for name in MODEL_ASSETS}
    rows = []
    for name, report in reports.items():
        test = report["test"]
        rows.append(
            {
                "model": name,
                "kind": report["kind"],
                "candidate": name in CHAMPION_CANDIDATES,
                tracking.VALIDATION_METRIC: report["validation_macro_f1"],
                **{k: test[k] for k in metrics.HEADLINE_KEYS},
                "macro_f1_top3_rule": report["test_top3_rule"]["macro_f1"],
                "macro_f1_with_poster": report["test_subsets"].get("with_poster", {}).get("macro_f1"),
                "test_movies": report["n_test"],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(store.model_comparison_file, index=False)
    candidate = max(CHAMPION_CANDIDATES, key=lambda n: reports[n]["validation_macro_f1"])
    chosen = reports[candidate]
    tracking.use_tracking(chosen["tracking_uri"], training.experiment, store.mlflow_artifacts_dir)
    promoted, decision = tracking.promote_if_better(
        chosen["model_uri"], chosen["run_id"], chosen["validation_macro_f1"], training.label_set, candidate
    )
    champion = tracking.current_champion(MlflowClient())
    return dg.MaterializeResult(
        metadata={
            "comparison": markdown_table(table, None),
            "candidate": candidate,
            "promoted": promoted,
            "decision": decision,
            "label_set": training.label_set,
            "champion_version": champion["version"],
        },
        # What downstream assets read of this one is the champion: they rerun only when it changes.
        data_version=dg.DataVersion(f"champion-v{champion['version']}-{champion['run_id']}"),
    )
