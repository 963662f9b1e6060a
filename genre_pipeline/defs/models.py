"""Model assets: cached embeddings, the baseline, text, image and fusion models, and their comparison.

Every training asset logs one MLflow run; model_comparison registers the better of text and
fusion on validation as genre-classifier@champion when it beats the current champion.
"""

import json
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from genre_pipeline.dataset.labels import LabelSet
from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import markdown_images, markdown_table, progress_logger
from genre_pipeline.defs.dataset import dataset_splits, genre_labels, movies_clean
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.models import finetune, genre_models, metrics, tracking
from genre_pipeline.models.embeddings import Embeddings, content_key, update_embeddings
from genre_pipeline.models.encoders import EncoderUnavailable, ImageEncoder, TextEncoder
from genre_pipeline.models.finetune import FineTuneConfig
from genre_pipeline.models.training import TrainingConfig
from genre_pipeline.store import DataStore, frame_fingerprint

MODEL_ASSETS = ("baseline_model", "text_model", "image_model", "fusion_model", "late_fusion_model")
LATE_FUSION_MEMBERS = ("baseline_model", "text_model", "image_model")


class EmbeddingConfig(dg.Config):
    batch_size: int = 64


class HeadConfig(dg.Config):
    max_epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = Field(default=8, description="Stop after this many epochs without a better validation macro-F1.")
    max_pos_weight: float = 10.0
    seed: int = 42
    # Used only when the training resource fine-tunes the encoders.
    fine_tune_max_epochs: int = 6
    fine_tune_batch_size: int = 32
    fine_tune_patience: int = 2
    encoder_learning_rate: float = Field(default=2e-5, description="Fine-tuning: the encoders' AdamW rate.")
    data_loader_workers: int = Field(default=2, description="Fine-tuning: processes decoding and augmenting posters.")

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            max_pos_weight=self.max_pos_weight,
            seed=self.seed,
        )

    def fine_tune_config(self) -> FineTuneConfig:
        return FineTuneConfig(
            max_epochs=self.fine_tune_max_epochs,
            batch_size=self.fine_tune_batch_size,
            encoder_learning_rate=self.encoder_learning_rate,
            head_learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.fine_tune_patience,
            max_pos_weight=self.max_pos_weight,
            num_workers=self.data_loader_workers,
            seed=self.seed,
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
    context, store: DataStore, modality: str, encoder_name: str, make_encoder, ids: list, keys: list, inputs: list
) -> dg.MaterializeResult:
    """Embeddings cached by (encoder, content key); the encoder loads only if something needs encoding."""
    encoder = None

    def get_encoder():
        nonlocal encoder
        encoder = encoder or _load_encoder(make_encoder)
        return encoder

    progress = progress_logger(context, f"{modality} embeddings")
    embeddings, stats = update_embeddings(
        store.embeddings_file(modality, encoder_name),
        ids,
        keys,
        inputs,
        lambda batch: get_encoder().encode(batch, progress),
        lambda: get_encoder().dim,
    )
    metadata = {
        "encoder": encoder_name,
        "dim": int(embeddings.vectors.shape[1]),
        "embedded": len(ids),
        "computed": stats.computed,
        "reused": stats.reused,
        "encode_s": round(stats.seconds, 2),
        "embeddings_per_s": round(stats.per_second, 1),
        **_throughput(stats, encoder),
    }
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(frame_fingerprint(pd.DataFrame({"k": embeddings.keys})))
    )


@dg.asset(group_name="models", deps=[movies_clean], automation_condition=ON_UPSTREAM_DATA_CHANGE, kinds={"pytorch"})
def text_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen text-encoder embeddings of each movie's model text; only new or changed texts are encoded."""
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    texts = movies["text"].tolist()
    return _embed(
        context,
        store,
        "text",
        training.text_encoder,
        lambda: TextEncoder(training.text_encoder, batch_size=config.batch_size, device=training.resolved_device()),
        movies["id"].tolist(),
        [content_key(t) for t in texts],
        texts,
    )


@dg.asset(group_name="models", deps=[movies_clean], automation_condition=ON_UPSTREAM_DATA_CHANGE, kinds={"pytorch"})
def poster_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen ImageNet features of every verified poster; only new or changed posters are encoded."""
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    with_poster = movies[movies["poster_status"] == "ok"]
    files = [store.root / f for f in with_poster["poster_file"]]
    return _embed(
        context,
        store,
        "image",
        training.image_encoder,
        lambda: ImageEncoder(
            training.image_encoder, batch_size=config.batch_size // 2, device=training.resolved_device()
        ),
        with_poster["id"].tolist(),
        [content_key(f.read_bytes()) for f in files],
        files,
    )


def _training_data(store: DataStore, training: TrainingResource, *, text: bool, image: bool):
    """The label set's movies, with the cached embeddings of the modalities asked for."""
    label_frame = store.read_table(store.labels_file(training.label_set))
    label_set = LabelSet.from_frame(training.label_set, label_frame)
    splits = store.read_table(store.splits_file)
    data = genre_models.assemble(
        store.read_table(store.movies_clean_file),
        label_set,
        splits,
        Embeddings.load(store.embeddings_file("text", training.text_encoder)) if text else None,
        Embeddings.load(store.embeddings_file("image", training.image_encoder)) if image else None,
        store.root,
    )
    fingerprint = frame_fingerprint(label_frame) + frame_fingerprint(splits)
    return data, fingerprint


def _log_and_report(
    context,
    name: str,
    outcome,
    data,
    store: DataStore,
    training: TrainingResource,
    params: dict,
    fingerprint: str,
    log_model,
) -> dg.MaterializeResult:
    """One MLflow run for the trained model; the report files; the asset's metadata. ``log_model``
    is None for a model that is not one loadable artifact (late fusion)."""
    out_dir = store.models_dir / name
    paths = outcome.write_report(data, out_dir)
    tracking_uri = training.tracking_uri or tracking.sqlite_uri(store.mlflow_db)
    experiment_id = tracking.use_tracking(tracking_uri, training.experiment, store.mlflow_artifacts_dir)
    all_params = {
        **params,
        "model": name,
        "kind": outcome.kind,
        "label_set": training.label_set,
        "labels": data.classes,
        "text_encoder": training.text_encoder,
        "image_encoder": training.image_encoder,
        "fine_tuned_encoders": ",".join(finetune.modalities(outcome.fine_tuned)),
        "device": training.resolved_device(),
        "data_fingerprint": fingerprint,
        "code_version": tracking.code_version(),
        "n_train": int(data.rows("train").sum()),
    }
    with tracking.training_run(name, all_params, tags={"dagster_run_id": context.run.run_id}) as run:
        tracking.log_history(outcome.history)
        tracking.log_test_metrics(outcome.test["summary"])
        tracking.log_test_metrics(outcome.test_seed_rule["summary"], prefix="test_seed_rule_")
        for subset, summary in outcome.test_subsets.items():
            tracking.log_test_metrics(summary, prefix=f"test_{subset}_")
        tracking.mlflow.log_metric("validation_macro_f1_tuned", outcome.validation_macro_f1)
        tracking.mlflow.log_artifacts(str(out_dir), artifact_path="report")
        if outcome.fine_tuned is not None:
            with tempfile.TemporaryDirectory() as encoders_dir:
                finetune.save_encoders(outcome.fine_tuned, Path(encoders_dir))
                tracking.mlflow.log_artifacts(encoders_dir, artifact_path=finetune.ENCODERS_ARTIFACT)
        model_info = log_model() if log_model else None
    report = json.loads(paths["report"].read_text())
    report.update(
        run_id=run.info.run_id,
        model_uri=model_info.model_uri if model_info else None,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )
    paths["report"].write_text(json.dumps(report, indent=2, default=float))
    summary = outcome.test["summary"]
    per_genre = outcome.test["per_genre"][["genre", "support", "predicted", "precision", "recall", "f1", "roc_auc"]]
    plots = markdown_images({"F1 per genre (test)": paths["f1_per_genre"], "ROC per genre (test)": paths["roc_curves"]})
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": dg.MetadataValue.url(
                f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
            ),
            "label_set": training.label_set,
            "validation_macro_f1": round(outcome.validation_macro_f1, 4),
            **{f"test_{k}": round(v, 4) for k, v in summary.items() if k != "n_movies"},
            "test_movies": summary["n_movies"],
            "test_macro_f1_seed_rule": round(outcome.test_seed_rule["summary"]["macro_f1"], 4),
            **{f"test_{s}_macro_f1": round(v["macro_f1"], 4) for s, v in outcome.test_subsets.items()},
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
                f"macro-F1 {record['validation_macro_f1']:.4f}"
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
    """TF-IDF + one-vs-rest logistic regression: the reference every neural model must beat."""
    store = storage.store
    data, fingerprint = _training_data(store, training, text=False, image=False)
    outcome = genre_models.train_baseline(data, C=config.C, seed=config.seed)
    example = list(np.asarray(data.texts, dtype=object)[data.rows("train")][:2])
    return _log_and_report(
        context,
        "baseline_model",
        outcome,
        data,
        store,
        training,
        config.model_dump(),
        fingerprint,
        lambda: tracking.log_sklearn_model(outcome.model, example),
    )


def _fresh_encoders(kind: str, training: TrainingResource) -> tuple:
    """Pretrained encoders for fine-tuning a head of this kind: (text or None, image or None)."""
    device = training.resolved_device()
    return (
        _load_encoder(lambda: TextEncoder(training.text_encoder, device=device)) if kind != "image" else None,
        _load_encoder(lambda: ImageEncoder(training.image_encoder, device=device)) if kind != "text" else None,
    )


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
                config.fine_tune_config(),
                lambda: _fresh_encoders(head_kind, training),
                on_epoch=on_epoch,
            )
        return genre_models.train_neural(name, head_kind, data, config.training_config(), on_epoch=on_epoch)

    if kind == "fusion":
        outcome, scores = genre_models.train_fusion(
            train_kind, on_epoch=lambda k, r: _epoch_logger(context, f"{k} ")(r)
        )
        context.log.info(f"fusion heads on validation: {scores}; kept {outcome.kind}")
    else:
        outcome = train_kind(kind, _epoch_logger(context))
    return _log_and_report(
        context,
        name,
        outcome,
        data,
        store,
        training,
        config.model_dump(),
        fingerprint,
        lambda: tracking.log_torch_model(outcome.model, outcome.input_example),
    )


def _head_model_asset(name: str, kind: str, deps: list, description: str) -> dg.AssetsDefinition:
    """text_model, image_model and fusion_model differ only in their features."""

    @dg.asset(
        name=name,
        description=description,
        group_name="models",
        deps=[*deps, genre_labels, dataset_splits],
        automation_condition=ON_UPSTREAM_DATA_CHANGE,
        kinds={"pytorch", "mlflow"},
    )
    def head_model(
        context: dg.AssetExecutionContext, config: HeadConfig, storage: StorageResource, training: TrainingResource
    ) -> dg.MaterializeResult:
        return _train_head_asset(context, name, kind, config, storage, training)

    return head_model


text_model = _head_model_asset(
    "text_model", "text", [text_embeddings], "The seed's text head on frozen text embeddings."
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
    deps=[baseline_model, text_model, image_model, genre_labels, dataset_splits],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"mlflow"},
)
def late_fusion_model(
    context: dg.AssetExecutionContext, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """The average of the baseline's, the text model's and the image model's probabilities (the image
    model's where a poster is usable), with thresholds tuned on validation: late fusion, for the
    comparison. Not registered as a champion: it needs three models and the TF-IDF pipeline to predict."""
    store = storage.store
    data, fingerprint = _training_data(store, training, text=False, image=False)
    outcome = genre_models.late_fusion(data, {name: store.models_dir / name for name in LATE_FUSION_MEMBERS})
    member_runs = {
        f"{name}_run_id": json.loads((store.models_dir / name / "report.json").read_text())["run_id"]
        for name in LATE_FUSION_MEMBERS
    }
    return _log_and_report(
        context, "late_fusion_model", outcome, data, store, training, member_runs, fingerprint, log_model=None
    )


@dg.asset(
    group_name="models",
    deps=[baseline_model, text_model, image_model, fusion_model, late_fusion_model],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"mlflow"},
)
def model_comparison(storage: StorageResource, training: TrainingResource) -> dg.MaterializeResult:
    """Every model's test metrics side by side; the better of text and fusion on validation becomes
    genre-classifier@champion when it beats the current champion."""
    store = storage.store
    reports = {name: json.loads((store.models_dir / name / "report.json").read_text()) for name in MODEL_ASSETS}
    rows = []
    for name, report in reports.items():
        test = report["test"]
        rows.append(
            {
                "model": name,
                "kind": report["kind"],
                "validation_macro_f1": report["validation_macro_f1"],
                **{k: test[k] for k in metrics.HEADLINE_KEYS},
                "macro_f1_seed_rule": report["test_seed_rule"]["macro_f1"],
                "macro_f1_with_poster": report["test_subsets"].get("with_poster", {}).get("macro_f1"),
                "test_movies": report["n_test"],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(store.models_dir / "model_comparison.csv", index=False)
    candidate = max(("text_model", "fusion_model"), key=lambda n: reports[n]["validation_macro_f1"])
    chosen = reports[candidate]
    tracking.use_tracking(chosen["tracking_uri"], training.experiment, store.mlflow_artifacts_dir)
    promoted, decision = tracking.promote_if_better(
        chosen["model_uri"], chosen["run_id"], chosen["validation_macro_f1"], training.label_set, candidate
    )
    return dg.MaterializeResult(
        metadata={
            "comparison": markdown_table(table, None),
            "candidate": candidate,
            "promoted": promoted,
            "decision": decision,
            "label_set": training.label_set,
        }
    )
