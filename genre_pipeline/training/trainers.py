"""The trainers: the TF-IDF baseline, a head on frozen-encoder features, a head fine-tuned with its
encoders, and the fusion heads' comparison. Each returns a ModelOutcome measured by ``evaluation``."""

from __future__ import annotations

import numpy as np

from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.encoders import EncoderRef, build_encoder
from genre_pipeline.models.heads import build_head
from genre_pipeline.models.members import HeadMember, TfidfMember
from genre_pipeline.training import finetune
from genre_pipeline.training.config import FUSION_KINDS, BaselineConfig, FineTuneConfig, ModelSetup, TrainingConfig
from genre_pipeline.training.data import TrainingData
from genre_pipeline.training.evaluation import ModelOutcome, evaluate, model_rows
from genre_pipeline.training.loop import set_seeds, train_head


def fit_head(
    kind: str,
    data: TrainingData,
    train_rows: np.ndarray,
    config: TrainingConfig,
    text: EncoderRef | None,
    image: EncoderRef | None,
    on_epoch=None,
):
    """A head on cached features, trained on ``train_rows``; early stopping on the validation split."""
    set_seeds(config.seed)
    dims = {
        "n_labels": len(data.classes),
        "text_dim": data.text_features[text.key].shape[1] if text else 0,
        "image_dim": data.poster_features[image.key].shape[1] if image else 0,
    }
    features = HeadMember(kind, {}, text, image, dims).features  # the inputs this kind of head reads
    val_rows = model_rows(data, kind)("validation")
    result = train_head(
        build_head(kind, **dims),
        features(data.inputs(train_rows)),
        data.labels[train_rows],
        features(data.inputs(val_rows)),
        data.labels[val_rows],
        config,
        image_dim=dims["image_dim"] if kind.endswith("fusion") else 0,
        on_epoch=on_epoch,
    )
    return HeadMember.from_module(kind, result.model, text, image, dims), result


def _single(name: str, member, classes: list[str]) -> GenreClassifier:
    """A classifier that is one member; its thresholds are tuned by evaluate."""
    return GenreClassifier(name, list(classes), np.zeros(0), {name: member})


def train_neural(
    name: str,
    kind: str,
    data: TrainingData,
    config: TrainingConfig,
    text: EncoderRef | None,
    image: EncoderRef | None,
    on_epoch=None,
) -> ModelOutcome:
    """A head on cached features of frozen encoders."""
    rows_for = model_rows(data, kind)
    member, result = fit_head(kind, data, rows_for("train"), config, text, image, on_epoch)
    classifier = _single(name, member, data.classes)
    return evaluate(
        name,
        kind,
        classifier if kind != "image" else None,  # the image model cannot predict without a poster
        data,
        lambda rows: classifier.probabilities(data.inputs(rows)),
        rows_for,
        history=result.history,
        best_epoch=result.best_epoch,
    )


def train_fine_tuned(
    name: str,
    kind: str,
    data: TrainingData,
    config: FineTuneConfig,
    encoders: tuple[EncoderRef | None, EncoderRef | None],
    device: str,
    on_epoch=None,
) -> ModelOutcome:
    """The encoders fine-tuned together with the head, from fresh pretrained ``encoders`` (text, image;
    None for a modality the kind does not read) on ``device``. Evaluation runs the fine-tuned encoders
    as the deployed model does."""
    rows_for = model_rows(data, kind)
    set_seeds(config.seed)
    text_encoder, image_encoder = (build_encoder(ref, device=device) if ref else None for ref in encoders)
    dims = {
        "n_labels": len(data.classes),
        "text_dim": text_encoder.dim if text_encoder else 0,
        "image_dim": image_encoder.dim if image_encoder else 0,
    }
    model = finetune.EncoderWithHead(build_head(kind, **dims), text_encoder, image_encoder)
    model = model.to((text_encoder or image_encoder).device)
    result = finetune.fine_tune(
        model,
        data.texts,
        data.poster_files,
        data.labels,
        np.flatnonzero(rows_for("train")),
        np.flatnonzero(rows_for("validation")),
        config,
        on_epoch=on_epoch,
    )
    text, image = finetune.encoder_refs(model)
    member = HeadMember.from_module(kind, finetune.head_on_cpu(model), text, image, dims)
    classifier = _single(name, member, data.classes)

    def probabilities_for(rows: np.ndarray) -> np.ndarray:
        return classifier.probabilities(_fine_tuned_inputs(model, data, text, image, rows))

    return evaluate(
        name,
        kind,
        classifier if kind != "image" else None,
        data,
        probabilities_for,
        rows_for,
        history=result.history,
        best_epoch=result.best_epoch,
        fine_tuned=model,
    )


def _fine_tuned_inputs(model, data: TrainingData, text: EncoderRef | None, image: EncoderRef | None, rows):
    """The inputs of ``rows`` with features from the fine-tuned encoders, computed as the deployed model
    computes them."""
    base = data.inputs(rows)
    index = np.flatnonzero(rows)
    if text is not None:
        base.text_features = {text.key: model.text_encoder.encode(base.texts)}
    if image is not None:
        features = np.zeros((len(index), model.image_encoder.dim), dtype=np.float32)
        present = base.has_poster
        if present.any():
            features[present] = model.image_encoder.encode([data.poster_files[i] for i in index[present]])
        base.poster_features = {image.key: features}
    return base


def train_fusion(train_kind, kinds=FUSION_KINDS, on_epoch=None) -> tuple[ModelOutcome, dict[str, float]]:
    """The fusion heads ``kinds``, each trained by ``train_kind(kind, on_epoch)``; the better on
    validation is the fusion model."""
    outcomes = {kind: train_kind(kind, (lambda r, k=kind: on_epoch(k, r)) if on_epoch else None) for kind in kinds}
    scores = {kind: outcome.validation_macro_f1 for kind, outcome in outcomes.items()}
    best = outcomes[max(scores, key=scores.get)]
    best.extra["fusion_validation_macro_f1"] = scores
    return best, scores


def train_baseline(data: TrainingData, config: BaselineConfig) -> ModelOutcome:
    """Word and character TF-IDF of the model text + one logistic regression per genre."""
    train_rows = data.rows("train")
    member = TfidfMember.fit(data.inputs(train_rows), data.labels[train_rows], C=config.C, seed=config.seed)
    classifier = _single("baseline_model", member, data.classes)
    return evaluate(
        "baseline_model",
        "tfidf_logreg",
        classifier,
        data,
        lambda rows: classifier.probabilities(data.inputs(rows)),
        data.rows,
    )


def train_head_model(
    name: str,
    kind: str,
    data: TrainingData,
    setup: ModelSetup,
    head: TrainingConfig,
    fine_tuning: FineTuneConfig,
    on_epoch=None,
    fusion_kinds: tuple[str, ...] | None = None,
) -> ModelOutcome:
    """The ``text``, ``image`` or ``fusion`` model: a head on cached features, or with its encoders
    fine-tuned when ``setup`` says so; for fusion both heads (or ``fusion_kinds``), the better on
    validation kept. ``on_epoch(kind, record)`` hears of every epoch."""

    def train_kind(head_kind: str, epoch_hook):
        if setup.fine_tune:
            return train_fine_tuned(
                name, head_kind, data, fine_tuning, setup.head_encoders(head_kind), setup.device, epoch_hook
            )
        return train_neural(name, head_kind, data, head, *setup.head_encoders(head_kind), epoch_hook)

    if kind == "fusion":
        kinds = fusion_kinds or (fine_tuning.fusion_kinds if setup.fine_tune else FUSION_KINDS)
        return train_fusion(train_kind, kinds, on_epoch)[0]
    return train_kind(kind, (lambda record: on_epoch(kind, record)) if on_epoch else None)
