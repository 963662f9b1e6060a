"""The genre heads' forward pass in numpy, from their weights (``heads`` trains them in PyTorch), so
that predicting needs no PyTorch. Dropout is the identity at inference and is skipped."""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def _linear(x: np.ndarray, weights: dict[str, np.ndarray], layer: str) -> np.ndarray:
    return x @ weights[f"{layer}.weight"].T + weights[f"{layer}.bias"]


def _classifier(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    # heads._classifier: Linear (classifier.0), ReLU, Dropout, Linear (classifier.3)
    return _linear(np.maximum(_linear(x, weights, "classifier.0"), 0), weights, "classifier.3")


def head_logits(kind: str, weights: dict[str, np.ndarray], features: np.ndarray, text_dim: int, image_dim: int):
    """What ``heads.build_head(kind, ...)`` with these weights returns for ``features`` in eval mode."""
    if kind in ("text", "image"):
        return _classifier(features, weights)
    text, image = features[:, :text_dim], features[:, text_dim : text_dim + image_dim]
    has_poster = features[:, -1:]
    if kind == "concat_fusion":
        text_part = np.maximum(_linear(text, weights, "text.0"), 0)
        image_part = np.maximum(_linear(image, weights, "image.0"), 0) * has_poster
        return _classifier(np.concatenate([text_part, image_part], axis=1), weights)
    if kind == "gmu_fusion":
        gate = expit(_linear(np.concatenate([text, image], axis=1), weights, "gate"))
        gate = gate * has_poster + (1 - has_poster)
        fused = gate * np.tanh(_linear(text, weights, "text")) + (1 - gate) * np.tanh(_linear(image, weights, "image"))
        return _classifier(fused, weights)
    raise ValueError(f"unknown head {kind!r}")


def head_probabilities(kind: str, weights: dict[str, np.ndarray], features: np.ndarray, dims: dict) -> np.ndarray:
    logits = head_logits(kind, weights, features, dims.get("text_dim", 0), dims.get("image_dim", 0))
    return expit(logits).astype(np.float32)
