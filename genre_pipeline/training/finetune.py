"""Full fine-tuning of the encoders together with a genre head (on CUDA, or when configured).

The fine-tuned model is the frozen path's model with its encoders unfrozen: the encoders
compute the same features (pooled text embedding, pooled poster features, has_poster) and
the same head reads them. So once trained, the fine-tuned encoders are saved beside the run
and the head is logged as any head is; the predictor runs the saved encoders instead of the
bundled ones. On 2 CPU cores one epoch of MiniLM over ~10k movies takes about ten minutes,
which is why the CPU default stays with frozen encoders and cached embeddings.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.models.encoders.image import IMAGE_SIZE, ImageEncoder, image_transform, read_image
from genre_pipeline.models.encoders.text import TextEncoder
from genre_pipeline.training.config import FineTuneConfig
from genre_pipeline.training.loop import TrainingResult, pos_weight, run_epochs, set_seeds

ENCODERS_ARTIFACT = "encoders"  # the MLflow artifact folder of a fine-tuned model's encoders
TEXT_ENCODER_DIR = "text_encoder"
IMAGE_ENCODER_FILE = "image_encoder.pt"


class _Posters(torch.utils.data.Dataset):
    """Row n: the decoded, transformed poster of movie n (zeros without one) and its has_poster flag."""

    def __init__(self, files: list[Path | None], augment: bool):
        self.files = files
        self.transform = image_transform(augment=augment)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, n: int):
        if self.files[n] is None:
            return torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE), torch.tensor(0.0)
        return read_image(self.files[n], self.transform), torch.tensor(1.0)


class EncoderWithHead(nn.Module):
    """Encoders (either may be absent) -> the features the frozen path caches -> a genre head."""

    def __init__(self, head: nn.Module, text_encoder: TextEncoder | None, image_encoder: ImageEncoder | None):
        super().__init__()
        self.head = head
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        # Registered so that parameters(), train() and state_dict() reach the encoders.
        self.text_network = text_encoder.model if text_encoder else None
        self.image_network = image_encoder.network if image_encoder else None

    def features(self, texts: list[str] | None, images: torch.Tensor | None, has_poster: torch.Tensor | None):
        parts = []
        if self.text_encoder is not None:
            parts.append(self.text_encoder.features(self.text_encoder.tokenize(texts)))
        if self.image_encoder is not None:
            # No poster: zero features, as the cached features and the predictor have it. Blank images
            # never enter the network, where they would skew its batch-norm statistics.
            present = has_poster > 0
            image_features = images.new_zeros((len(images), self.image_encoder.dim))
            if present.any():
                image_features[present] = self.image_network(images[present]).to(image_features.dtype)
            parts.append(image_features)
            if self.text_encoder is not None:
                parts.append(has_poster[:, None])
        return torch.cat(parts, dim=1)

    def forward(self, texts, images, has_poster) -> torch.Tensor:
        return self.head(self.features(texts, images, has_poster))


def _batches(model: EncoderWithHead, texts, posters, rows, config: FineTuneConfig, *, train: bool, generator=None):
    """(texts, images, has_poster, rows) per batch of ``rows``, in random order when training."""
    order = rows[torch.randperm(len(rows), generator=generator).numpy()] if train else rows
    device = next(model.parameters()).device
    loader = None
    if model.image_encoder is not None:
        loader = iter(
            torch.utils.data.DataLoader(
                torch.utils.data.Subset(_Posters(posters, augment=train), order.tolist()),
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                pin_memory=device.type == "cuda",
                generator=generator,
            )
        )
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        images, has_poster = next(loader) if loader is not None else (None, None)
        if images is not None:
            images, has_poster = images.to(device, non_blocking=True), has_poster.to(device)
        yield [texts[i] for i in index] if model.text_encoder is not None else None, images, has_poster, index


def _autocast(device: torch.device):
    # Training only: bf16 on CUDA halves activation memory; CPU autocast is slower than fp32 on small cores.
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


@torch.inference_mode()
def predict_logits(model: EncoderWithHead, texts, posters, rows: np.ndarray, config: FineTuneConfig) -> torch.Tensor:
    """In fp32, as the predictor runs the saved model: evaluation measures what is deployed."""
    model.eval()
    return torch.cat(
        [model(*batch[:3]).float().cpu() for batch in _batches(model, texts, posters, rows, config, train=False)]
    )


def _warmup_cosine(total_steps: int, warmup_share: float):
    warmup = max(1, int(total_steps * warmup_share))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


def fine_tune(
    model: EncoderWithHead,
    texts: list[str],
    posters: list[Path | None],
    labels: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: FineTuneConfig,
    on_epoch=None,
) -> TrainingResult:
    """BCE with per-genre pos_weight, AdamW (a small rate for the encoders, a larger one for the head),
    warm-up then cosine decay, early stopping on validation macro-F1, best checkpoint kept."""
    set_seeds(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight(labels[train_rows], config.max_pos_weight).to(device))
    head_parameters = {id(p) for p in model.head.parameters()}
    encoder_parameters = [p for p in model.parameters() if id(p) not in head_parameters]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_parameters, "lr": config.encoder_learning_rate},
            {"params": list(model.head.parameters()), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps = config.max_epochs * math.ceil(len(train_rows) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(steps, config.warmup_share))
    y = torch.from_numpy(labels.astype(np.float32))
    fusion = model.text_encoder is not None and model.image_encoder is not None

    def train_batches():
        for batch_texts, images, has_poster, index in _batches(
            model, texts, posters, train_rows, config, train=True, generator=generator
        ):
            if fusion and config.modality_dropout:
                # Modality dropout: fusion must also predict from text alone, as it does without a poster.
                kept = torch.rand(len(index), generator=generator) >= config.modality_dropout
                has_poster = has_poster * kept.to(has_poster)
            yield (batch_texts, images, has_poster), y[index].to(device)

    def validation():
        return predict_logits(model, texts, posters, val_rows, config).to(device), y[val_rows].to(device)

    return run_epochs(
        model,
        criterion,
        optimizer,
        scheduler,
        max_epochs=config.max_epochs,
        patience=config.patience,
        train_batches=train_batches,
        validation=validation,
        clip_norm=1.0,
        autocast=lambda: _autocast(device),
        on_epoch=on_epoch,
    )


def save_encoders(model: EncoderWithHead, classifier_dir: Path) -> None:
    """The fine-tuned encoders, inside the classifier's folder where ``encoder_refs`` points."""
    out_dir = classifier_dir / ENCODERS_ARTIFACT
    out_dir.mkdir(parents=True, exist_ok=True)
    if model.text_encoder is not None:
        model.text_encoder.save(out_dir / TEXT_ENCODER_DIR)
    if model.image_encoder is not None:
        model.image_encoder.save(out_dir / IMAGE_ENCODER_FILE)


def encoder_refs(model: EncoderWithHead) -> tuple[EncoderRef | None, EncoderRef | None]:
    """How a classifier refers to the fine-tuned encoders that ``save_encoders`` writes beside it."""
    text = image = None
    if model.text_encoder is not None:
        text = EncoderRef(
            "text",
            model.text_encoder.name,
            model.text_encoder.backend,  # what its evaluation ran on
            f"{ENCODERS_ARTIFACT}/{TEXT_ENCODER_DIR}",
        )
    if model.image_encoder is not None:
        image = EncoderRef(
            "image",
            model.image_encoder.name,
            model.image_encoder.backend,
            f"{ENCODERS_ARTIFACT}/{IMAGE_ENCODER_FILE}",
        )
    return text, image


def modalities(model: EncoderWithHead | None) -> list[str]:
    """The fine-tuned encoders of a model: none when its encoders stayed frozen."""
    if model is None:
        return []
    return [m for m, encoder in (("text", model.text_encoder), ("image", model.image_encoder)) if encoder is not None]


def head_on_cpu(model: EncoderWithHead) -> nn.Module:
    return copy.deepcopy(model.head).cpu().eval()
