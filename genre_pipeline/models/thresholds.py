"""Decision rules: per-genre thresholds tuned on validation, and the original study's top-3 ≥ 0.3 rule."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
TOP3_RULE = {"k": 3, "minimum": 0.3}


def tune_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per genre, the threshold on the grid with the best F1 on these (validation) predictions; 0.5 for a
    genre none of them has (every threshold scores F1 0 there, and the grid's lowest would be chosen)."""
    thresholds = np.full(labels.shape[1], 0.5)
    for j in range(labels.shape[1]):
        if not labels[:, j].any():
            continue
        scores = [f1_score(labels[:, j], probabilities[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID]
        thresholds[j] = THRESHOLD_GRID[int(np.argmax(scores))]
    return thresholds


def apply_thresholds(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return (probabilities >= thresholds[None, :]).astype(np.uint8)


def top3_rule(probabilities: np.ndarray, k: int = TOP3_RULE["k"], minimum: float = TOP3_RULE["minimum"]) -> np.ndarray:
    """The original study's decision rule: the top k genres whose probability is at least ``minimum``."""
    predictions = np.zeros_like(probabilities, dtype=np.uint8)
    top = np.argsort(-probabilities, axis=1)[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    predictions[rows, top] = (probabilities[rows, top] >= minimum).astype(np.uint8)
    return predictions
