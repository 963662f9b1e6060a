"""Evaluation: thresholds tuned on validation, every figure measured on the test split from one set of
predictions per model, and the report files a model's MLflow run carries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from genre_pipeline.models import metrics
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.thresholds import apply_thresholds, choose_thresholds, top3_rule
from genre_pipeline.training.data import TrainingData

if TYPE_CHECKING:  # fine-tuning loads torch and the encoders; evaluation itself does not need them
    from genre_pipeline.training.finetune import EncoderWithHead


PROBABILITIES_FILE = "probabilities.npz"  # validation and test probabilities, for late fusion


@dataclasses.dataclass
class ModelOutcome:
    name: str
    kind: str
    classifier: GenreClassifier | None  # the deployable model; None for the image-only comparison model
    classes: list[str]
    thresholds: np.ndarray
    validation_macro_f1: float  # with the tuned thresholds, for model selection
    test: dict  # metrics.evaluate() on the test split with the tuned thresholds
    test_top3_rule: dict  # the same probabilities, decided by the top-3 >= 0.3 rule
    test_subsets: dict  # name -> summary on a subset of the test split
    test_ids: np.ndarray
    test_probabilities: np.ndarray
    test_predictions: np.ndarray
    validation_ids: np.ndarray
    validation_probabilities: np.ndarray  # what the thresholds were tuned on
    history: list[dict] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    fine_tuned: EncoderWithHead | None = None  # the encoders were fine-tuned with the head

    def write_report(self, data: TrainingData, out_dir: Path, run_id: str | None = None) -> dict[str, Path]:
        """Report files: JSON summary, per-genre table, sample predictions, history, plots."""
        out_dir.mkdir(parents=True, exist_ok=True)
        order = {int(i): n for n, i in enumerate(data.ids)}
        index = [order[int(i)] for i in self.test_ids]
        y_true = data.labels[index]
        paths = metrics.write_plots(
            y_true,
            self.test_predictions,
            self.test_probabilities,
            self.classes,
            self.test["per_genre"],
            out_dir,
            self.name,
        )
        summary = {
            "model": self.name,
            "run_id": run_id,
            "kind": self.kind,
            "classes": self.classes,
            "thresholds": dict(zip(self.classes, self.thresholds.tolist())),
            "validation_macro_f1": self.validation_macro_f1,
            "best_epoch": self.best_epoch,
            "test": self.test["summary"],
            "test_top3_rule": self.test_top3_rule["summary"],
            "test_subsets": self.test_subsets,
            "n_test": len(self.test_ids),
            **self.extra,
        }
        paths["report"] = out_dir / "report.json"
        paths["report"].write_text(json.dumps(summary, indent=2, default=float))
        paths["per_genre"] = out_dir / "per_genre.csv"
        self.test["per_genre"].to_csv(paths["per_genre"], index=False)
        samples = metrics.sample_predictions(
            self.test_ids,
            [data.titles[i] for i in index],
            y_true,
            self.test_predictions,
            self.test_probabilities,
            self.classes,
        )
        paths["samples"] = out_dir / "sample_predictions.csv"
        samples.to_csv(paths["samples"], index=False)
        paths["probabilities"] = out_dir / PROBABILITIES_FILE
        np.savez(
            paths["probabilities"],
            classes=np.asarray(self.classes),
            validation_ids=self.validation_ids,
            validation_probabilities=self.validation_probabilities,
            test_ids=self.test_ids,
            test_probabilities=self.test_probabilities,
        )
        paths["train_ids"] = out_dir / "train_ids.json"
        paths["train_ids"].write_text(json.dumps(data.ids[data.rows("train")].astype(int).tolist()))
        if self.history:
            paths["history"] = out_dir / "history.csv"
            pd.DataFrame(self.history).to_csv(paths["history"], index=False)
        return paths


def evaluate(name, kind, classifier, data: TrainingData, probabilities_for, rows_for, **extra) -> ModelOutcome:
    """Tune thresholds on validation, then measure everything on test."""
    val_rows, test_rows = rows_for("validation"), rows_for("test")
    val_probabilities = probabilities_for(val_rows)
    choice = choose_thresholds(val_probabilities, data.labels[val_rows])
    thresholds = choice.thresholds
    extra["extra"] = {**choice.figures(), **extra.get("extra", {})}
    val_f1 = metrics.evaluate(
        data.labels[val_rows], apply_thresholds(val_probabilities, thresholds), val_probabilities, data.classes
    )["summary"]["macro_f1"]
    test_probabilities = probabilities_for(test_rows)
    predictions = apply_thresholds(test_probabilities, thresholds)
    y_test = data.labels[test_rows]
    report = metrics.evaluate(y_test, predictions, test_probabilities, data.classes)
    top3 = metrics.evaluate(y_test, top3_rule(test_probabilities), test_probabilities, data.classes)
    subsets = {}
    with_poster = data.has_poster[test_rows]
    if kind != "image" and with_poster.any() and not with_poster.all():
        subsets["with_poster"] = metrics.evaluate(
            y_test[with_poster], predictions[with_poster], test_probabilities[with_poster], data.classes
        )["summary"]
    if classifier is not None:
        classifier.thresholds = thresholds
    return ModelOutcome(
        name,
        kind,
        classifier,
        data.classes,
        thresholds,
        val_f1,
        report,
        top3,
        subsets,
        data.ids[test_rows],
        test_probabilities,
        predictions,
        data.ids[val_rows],
        val_probabilities,
        **extra,
    )


def model_rows(data: TrainingData, kind: str):
    """The image model uses movies with posters only."""
    return lambda split: data.rows(split, posters_only=kind == "image")


def from_split_scores(data: TrainingData, scores: dict[str, np.ndarray]):
    """``probabilities_for`` (see evaluate) over probabilities computed once per split, for row masks
    within one split."""

    def probabilities_for(rows: np.ndarray) -> np.ndarray:
        split = data.split[rows][0]
        return scores[split][rows[data.rows(split)]]

    return probabilities_for
