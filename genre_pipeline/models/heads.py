"""Genre heads trained on frozen-encoder features.

Every head takes one float tensor, so a logged model has one input: the text embedding,
the image features, or for fusion ``[text | image | has_poster]``. A movie without a
usable poster has zero image features and has_poster 0; fusion then predicts from text.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HEAD_KINDS = ("text", "image", "concat_fusion", "gmu_fusion")


def _classifier(n_in: int, n_labels: int, hidden: int = 128, dropout: float = 0.3) -> nn.Sequential:
    # The original study's head: Linear -> 128 -> Dropout 0.3 -> Linear n_labels (with a ReLU between,
    # without which the two linear layers would collapse into one).
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_labels))


class SingleModalityHead(nn.Module):
    """The original study's text head; used on image features too for the poster-only model."""

    def __init__(self, n_in: int, n_labels: int):
        super().__init__()
        self.classifier = _classifier(n_in, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class _FusionBase(nn.Module):
    def __init__(self, text_dim: int, image_dim: int):
        super().__init__()
        self.text_dim, self.image_dim = text_dim, image_dim

    def split(self, features: torch.Tensor):
        text = features[:, : self.text_dim]
        image = features[:, self.text_dim : self.text_dim + self.image_dim]
        has_poster = features[:, -1:]
        return text, image, has_poster


class ConcatFusionHead(_FusionBase):
    """The original study's fusion: text -> 256, image -> 256, concatenated 512 -> 128 -> n_labels."""

    def __init__(self, text_dim: int, image_dim: int, n_labels: int, dropout: float = 0.3):
        super().__init__(text_dim, image_dim)
        self.text = nn.Sequential(nn.Linear(text_dim, 256), nn.ReLU(), nn.Dropout(dropout))
        self.image = nn.Sequential(nn.Linear(image_dim, 256), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = _classifier(512, n_labels, dropout=dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text, image, has_poster = self.split(features)
        return self.classifier(torch.cat([self.text(text), self.image(image) * has_poster], dim=1))


class GatedMultimodalHead(_FusionBase):
    """A gated multimodal unit (Arevalo et al. 2017): h = z * tanh(W_t t) + (1 - z) * tanh(W_v v),
    z = sigmoid(W_z [t; v]). Without a poster the gate is forced to the text."""

    def __init__(self, text_dim: int, image_dim: int, n_labels: int, hidden: int = 256, dropout: float = 0.3):
        super().__init__(text_dim, image_dim)
        self.text = nn.Linear(text_dim, hidden)
        self.image = nn.Linear(image_dim, hidden)
        self.gate = nn.Linear(text_dim + image_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = _classifier(hidden, n_labels, dropout=dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text, image, has_poster = self.split(features)
        z = torch.sigmoid(self.gate(torch.cat([text, image], dim=1)))
        z = z * has_poster + (1 - has_poster)
        fused = z * torch.tanh(self.text(text)) + (1 - z) * torch.tanh(self.image(image))
        return self.classifier(self.dropout(fused))


def build_head(kind: str, *, n_labels: int, text_dim: int = 0, image_dim: int = 0) -> nn.Module:
    if kind == "text":
        return SingleModalityHead(text_dim, n_labels)
    if kind == "image":
        return SingleModalityHead(image_dim, n_labels)
    if kind == "concat_fusion":
        return ConcatFusionHead(text_dim, image_dim, n_labels)
    if kind == "gmu_fusion":
        return GatedMultimodalHead(text_dim, image_dim, n_labels)
    raise ValueError(f"unknown head {kind!r}: one of {HEAD_KINDS}")


@torch.inference_mode()
def predict_proba(model: nn.Module, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    outputs = [
        torch.sigmoid(model(torch.from_numpy(features[i : i + batch_size]))).numpy()
        for i in range(0, len(features), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
