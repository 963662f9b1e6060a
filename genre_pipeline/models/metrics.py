"""Evaluation of one set of multi-label predictions: every figure comes from the same
predictions, so precision, recall and F1 agree with each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported when a report draws (a quarter of a second that
    predicting and serving, which draw nothing, do not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The figures a comparison shows, in order.
HEADLINE_KEYS = (
    "macro_f1",
    "micro_f1",
    "weighted_f1",
    "samples_f1",
    "macro_precision",
    "macro_recall",
    "hamming_loss",
    "jaccard_samples",
    "subset_accuracy",
    "macro_roc_auc",
)


# Fewer scored movies than this: a figure is "not measured", with the reason, instead of a number that
# a handful of movies decides (or an error on none).
MIN_MEASURED_MOVIES = 100


def not_measured(n_movies: int, minimum: int = MIN_MEASURED_MOVIES) -> str:
    """Why a figure over ``n_movies`` is not measured ("" when it is)."""
    if n_movies >= minimum:
        return ""
    return f"not measured: {n_movies} movies to score, fewer than {minimum}"


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Summary metrics and a per-genre table from one set of predictions. Macro averages are over the
    genres at least one of these movies has (``genres_without_positive`` names the others): a genre none
    of them has has no recall to measure, and counting it as F1 0 would pull the average down for the
    slice, not for the model. Raises ValueError on no movies."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    if len(y_true) == 0:
        raise ValueError("no movies to evaluate")
    present = y_true.sum(axis=0) > 0
    summary = {}
    for average in ("macro", "micro", "weighted", "samples"):
        labels = np.flatnonzero(present) if average == "macro" else None
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        summary[f"{average}_f1"] = float(f1)
        summary[f"{average}_precision"] = float(precision)
        summary[f"{average}_recall"] = float(recall)
    summary["hamming_loss"] = float(skm.hamming_loss(y_true, y_pred))
    summary["jaccard_samples"] = float(skm.jaccard_score(y_true, y_pred, average="samples", zero_division=0))
    summary["subset_accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    auc = [
        float(skm.roc_auc_score(y_true[:, j], probabilities[:, j]))
        if 0 < y_true[:, j].sum() < len(y_true)
        else float("nan")
        for j in range(len(classes))
    ]
    summary["macro_roc_auc"] = float(np.nanmean(auc)) if not np.isnan(auc).all() else float("nan")
    tp = (y_true & y_pred).sum(axis=0)
    per_genre = pd.DataFrame(
        {
            "genre": classes,
            "support": support.astype(int),
            "predicted": y_pred.sum(axis=0).astype(int),
            "true_positives": tp.astype(int),
            "false_positives": (y_pred.sum(axis=0) - tp).astype(int),
            "false_negatives": (support - tp).astype(int),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "roc_auc": auc,
        }
    )
    summary["n_movies"] = int(len(y_true))
    summary["genres_without_positive"] = [c for c, p in zip(classes, present) if not p]
    return {"summary": summary, "per_genre": per_genre}


def f1_per_genre(truth: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """F1 of each genre over the movies (axis 0) of two boolean arrays, any further axes (thresholds) kept;
    0 for a genre with neither a positive nor a decision."""
    tp = (truth & decided).sum(axis=0)
    wrong = (truth ^ decided).sum(axis=0)  # false positives + false negatives
    return 2 * tp / np.maximum(2 * tp + wrong, 1)


def bootstrap_macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of macro-F1 over movies (resampled with replacement), each
    resample's macro-F1 over the genres ``evaluate`` averages (those with a positive in ``y_true``; one
    missing from a resample counts 0 there)."""
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if len(y_true) == 0:
        return float("nan"), float("nan")
    present = y_true.any(axis=0)
    y_true, y_pred = y_true[:, present], y_pred[:, present]
    rng = np.random.default_rng(seed)
    scores = np.empty(resamples)
    for n in range(resamples):
        rows = rng.integers(0, len(y_true), len(y_true))
        scores[n] = f1_per_genre(y_true[rows], y_pred[rows]).mean()
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def sample_predictions(ids, titles, y_true, y_pred, probabilities, classes, n: int = 15) -> pd.DataFrame:
    rows = []
    for i in range(min(n, len(ids))):
        top = np.argsort(-probabilities[i])[:3]
        rows.append(
            {
                "id": int(ids[i]),
                "title": titles[i],
                "true": ", ".join(c for c, v in zip(classes, y_true[i]) if v),
                "predicted": ", ".join(c for c, v in zip(classes, y_pred[i]) if v),
                "top_3": ", ".join(f"{classes[j]} {probabilities[i, j]:.2f}" for j in top),
            }
        )
    return pd.DataFrame(rows)


def _grid(n: int) -> tuple[int, int]:
    columns = 6
    return int(np.ceil(n / columns)), columns


def write_plots(y_true, y_pred, probabilities, classes, per_genre: pd.DataFrame, out_dir: Path, title: str) -> dict:
    """ROC curves, per-genre F1, per-genre confusion matrices, predicted vs true positives."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    rows, columns = _grid(len(classes))

    figure, axes = _pyplot().subplots(rows, columns, figsize=(2.6 * columns, 2.4 * rows), squeeze=False)
    for j, genre in enumerate(classes):
        axis = axes.flat[j]
        if 0 < y_true[:, j].sum() < len(y_true):
            fpr, tpr, _ = skm.roc_curve(y_true[:, j], probabilities[:, j])
            axis.plot(fpr, tpr)
        axis.plot([0, 1], [0, 1], ":", color="grey")
        axis.set_title(f"{genre} AUC {per_genre['roc_auc'][j]:.2f}", fontsize=8)
        axis.tick_params(labelsize=6)
    for axis in list(axes.flat)[len(classes) :]:
        axis.axis("off")
    figure.suptitle(f"{title}: ROC per genre (test)")
    paths["roc_curves"] = _save(figure, out_dir / "roc_curves.png")

    figure, axis = _pyplot().subplots(figsize=(7, 0.3 * len(classes) + 1.5))
    ordered = per_genre.sort_values("f1")
    axis.barh(ordered["genre"], ordered["f1"], color="#4C72B0")
    axis.axvline(per_genre["f1"].mean(), color="black", linestyle="--", label=f"macro F1 {per_genre['f1'].mean():.3f}")
    axis.set_xlim(0, 1)
    axis.legend(loc="lower right")
    axis.set_title(f"{title}: F1 per genre (test)")
    paths["f1_per_genre"] = _save(figure, out_dir / "f1_per_genre.png")

    figure, axes = _pyplot().subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    matrices = skm.multilabel_confusion_matrix(y_true, y_pred)
    for j, genre in enumerate(classes):
        axis = axes.flat[j]
        axis.imshow(matrices[j], cmap="Blues")
        for (r, c), value in np.ndenumerate(matrices[j]):
            axis.text(c, r, str(value), ha="center", va="center", fontsize=7)
        axis.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=6)
        axis.set_yticks([0, 1], ["true 0", "true 1"], fontsize=6)
        axis.set_title(genre, fontsize=8)
    for axis in list(axes.flat)[len(classes) :]:
        axis.axis("off")
    figure.suptitle(f"{title}: confusion matrix per genre (test)")
    paths["confusion_matrices"] = _save(figure, out_dir / "confusion_matrices.png")

    figure, axis = _pyplot().subplots(figsize=(9, 4))
    positions = np.arange(len(classes))
    axis.bar(positions - 0.2, per_genre["support"], width=0.4, label="true positives in test")
    axis.bar(positions + 0.2, per_genre["predicted"], width=0.4, label="predicted positives")
    axis.set_xticks(positions, classes, rotation=70, fontsize=7)
    axis.legend()
    axis.set_title(f"{title}: predicted vs true positives per genre (test)")
    paths["predicted_vs_true"] = _save(figure, out_dir / "predicted_vs_true.png")
    return paths


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    _pyplot().close(figure)
    return path
