"""The genre models, trained and evaluated: TF-IDF baseline, text, image and fusion heads.

Training sees the train split only; thresholds are tuned on validation only; every
reported figure is measured on the test split, from one set of predictions per model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline

from genre_pipeline.dataset.labels import LabelSet
from genre_pipeline.models import finetune, metrics
from genre_pipeline.models.embeddings import Embeddings
from genre_pipeline.models.heads import build_head
from genre_pipeline.models.training import (
    TrainingConfig,
    apply_thresholds,
    predict_proba,
    seed_rule,
    set_seeds,
    train_head,
    tune_thresholds,
)


@dataclasses.dataclass
class TrainingData:
    ids: np.ndarray
    titles: list[str]
    texts: list[str]
    split: np.ndarray
    labels: np.ndarray
    classes: list[str]
    text: np.ndarray | None  # cached embeddings, when a frozen text encoder is used
    image: np.ndarray | None  # cached poster features (zeros without a poster), likewise
    has_poster: np.ndarray
    poster_files: list[Path | None]  # the verified poster of each movie, for fine-tuning

    def rows(self, split: str, *, posters_only: bool = False) -> np.ndarray:
        mask = self.split == split
        return mask & self.has_poster if posters_only else mask

    def features(self, kind: str, rows: np.ndarray) -> np.ndarray:
        if kind == "text":
            return self.text[rows]
        if kind == "image":
            return self.image[rows]
        return np.hstack([self.text[rows], self.image[rows], self.has_poster[rows, None].astype(np.float32)])


def _rows_by_id(embeddings: Embeddings | None, needed: np.ndarray, modality: str) -> dict[int, int]:
    if embeddings is None:
        return {}
    rows = embeddings.by_id()
    missing = [int(i) for i in needed if int(i) not in rows]
    if missing:
        raise ValueError(
            f"{len(missing)} labelled movies have no {modality} embedding (e.g. {missing[:5]}): "
            f"materialize {modality}_embeddings"
        )
    return rows


def assemble(
    movies: pd.DataFrame,
    label_set: LabelSet,
    splits: pd.DataFrame,
    text: Embeddings | None,
    image: Embeddings | None,
    poster_root: Path,
) -> TrainingData:
    """Align labels, splits, texts, posters and cached features by movie id (the label set's movies)."""
    movies = movies.set_index("id")
    split_of = splits.set_index("id")["split"]
    ids = label_set.ids
    has_poster = (movies.loc[ids, "poster_status"] == "ok").to_numpy()
    text_rows = _rows_by_id(text, ids, "text")
    image_rows = _rows_by_id(image, ids[has_poster], "poster")
    image_matrix = None
    if image is not None:
        image_matrix = np.zeros((len(ids), image.vectors.shape[1]), dtype=np.float32)
        for n, movie_id in enumerate(ids):
            if has_poster[n]:
                image_matrix[n] = image.vectors[image_rows[int(movie_id)]]
    return TrainingData(
        ids=ids,
        titles=movies.loc[ids, "title"].tolist(),
        texts=movies.loc[ids, "text"].tolist(),
        split=split_of.loc[ids].to_numpy(),
        labels=label_set.matrix,
        classes=label_set.classes,
        text=text.vectors[[text_rows[int(i)] for i in ids]] if text is not None else None,
        image=image_matrix,
        has_poster=has_poster,
        poster_files=[poster_root / f if ok else None for f, ok in zip(movies.loc[ids, "poster_file"], has_poster)],
    )


PROBABILITIES_FILE = "probabilities.npz"  # validation and test probabilities, for late fusion


@dataclasses.dataclass
class ModelOutcome:
    name: str
    kind: str
    model: object  # a torch head or a scikit-learn pipeline
    classes: list[str]
    thresholds: np.ndarray
    validation_macro_f1: float  # with the tuned thresholds, for model selection
    test: dict  # metrics.evaluate() on the test split with the tuned thresholds
    test_seed_rule: dict  # the same predictions' probabilities, decided by the seed's top-3 >= 0.3 rule
    test_subsets: dict  # name -> summary on a subset of the test split
    test_ids: np.ndarray
    test_probabilities: np.ndarray
    test_predictions: np.ndarray
    validation_ids: np.ndarray
    validation_probabilities: np.ndarray  # what the thresholds were tuned on
    history: list[dict] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    input_example: np.ndarray | None = None  # a few rows of the head's input, for the logged model
    fine_tuned: finetune.EncoderWithHead | None = None  # the encoders were fine-tuned with the head

    def write_report(self, data: TrainingData, out_dir: Path) -> dict[str, Path]:
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
            "kind": self.kind,
            "classes": self.classes,
            "thresholds": dict(zip(self.classes, self.thresholds.tolist())),
            "validation_macro_f1": self.validation_macro_f1,
            "best_epoch": self.best_epoch,
            "test": self.test["summary"],
            "test_seed_rule": self.test_seed_rule["summary"],
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


def _evaluate(name, kind, model, data, probabilities_for, rows_for, **extra) -> ModelOutcome:
    """Tune thresholds on validation, then measure everything on test."""
    val_rows, test_rows = rows_for("validation"), rows_for("test")
    val_probabilities = probabilities_for(val_rows)
    thresholds = tune_thresholds(val_probabilities, data.labels[val_rows])
    val_f1 = metrics.evaluate(
        data.labels[val_rows], apply_thresholds(val_probabilities, thresholds), val_probabilities, data.classes
    )["summary"]["macro_f1"]
    test_probabilities = probabilities_for(test_rows)
    predictions = apply_thresholds(test_probabilities, thresholds)
    y_test = data.labels[test_rows]
    report = metrics.evaluate(y_test, predictions, test_probabilities, data.classes)
    seed = metrics.evaluate(y_test, seed_rule(test_probabilities), test_probabilities, data.classes)
    subsets = {}
    with_poster = data.has_poster[test_rows]
    if kind != "image" and with_poster.any() and not with_poster.all():
        subsets["with_poster"] = metrics.evaluate(
            y_test[with_poster], predictions[with_poster], test_probabilities[with_poster], data.classes
        )["summary"]
    return ModelOutcome(
        name,
        kind,
        model,
        data.classes,
        thresholds,
        val_f1,
        report,
        seed,
        subsets,
        data.ids[test_rows],
        test_probabilities,
        predictions,
        data.ids[val_rows],
        val_probabilities,
        **extra,
    )


def _rows_for(data: TrainingData, kind: str):
    """The image model uses movies with posters only."""
    return lambda split: data.rows(split, posters_only=kind == "image")


def train_neural(name: str, kind: str, data: TrainingData, config: TrainingConfig, on_epoch=None) -> ModelOutcome:
    """A head on cached features."""
    rows_for = _rows_for(data, kind)
    set_seeds(config.seed)
    head = build_head(
        kind,
        n_labels=len(data.classes),
        text_dim=data.text.shape[1] if data.text is not None else 0,
        image_dim=data.image.shape[1] if data.image is not None else 0,
    )
    train_rows, val_rows = rows_for("train"), rows_for("validation")
    result = train_head(
        head,
        data.features(kind, train_rows),
        data.labels[train_rows],
        data.features(kind, val_rows),
        data.labels[val_rows],
        config,
        image_dim=data.image.shape[1] if kind.endswith("fusion") else 0,
        on_epoch=on_epoch,
    )
    return _evaluate(
        name,
        kind,
        result.model,
        data,
        lambda rows: predict_proba(result.model, data.features(kind, rows)),
        rows_for,
        history=result.history,
        best_epoch=result.best_epoch,
        input_example=data.features(kind, _first_rows(rows_for("train"))),
    )


def _first_rows(rows: np.ndarray, n: int = 2) -> np.ndarray:
    return np.flatnonzero(rows)[:n]


def train_fine_tuned(
    name: str, kind: str, data: TrainingData, config: finetune.FineTuneConfig, make_encoders, on_epoch=None
) -> ModelOutcome:
    """The encoders fine-tuned together with the head. ``make_encoders()`` gives fresh pretrained
    (text, image) encoders on the training device, None for a modality the kind does not read."""
    rows_for = _rows_for(data, kind)
    set_seeds(config.seed)
    text_encoder, image_encoder = make_encoders()
    head = build_head(
        kind,
        n_labels=len(data.classes),
        text_dim=text_encoder.dim if text_encoder else 0,
        image_dim=image_encoder.dim if image_encoder else 0,
    )
    model = finetune.EncoderWithHead(head, text_encoder, image_encoder).to((text_encoder or image_encoder).device)
    texts, posters = data.texts, data.poster_files
    result = finetune.fine_tune(
        model,
        texts,
        posters,
        data.labels,
        np.flatnonzero(rows_for("train")),
        np.flatnonzero(rows_for("validation")),
        config,
        on_epoch=on_epoch,
    )
    return _evaluate(
        name,
        kind,
        finetune.head_on_cpu(model),
        data,
        lambda rows: finetune.predict_proba(model, texts, posters, np.flatnonzero(rows), config),
        rows_for,
        history=result.history,
        best_epoch=result.best_epoch,
        input_example=finetune.features(model, texts, posters, _first_rows(rows_for("train")), config),
        fine_tuned=model,
    )


FUSION_KINDS = ("concat_fusion", "gmu_fusion")


def train_fusion(train_kind, on_epoch=None) -> tuple[ModelOutcome, dict[str, float]]:
    """Both fusion heads, each trained by ``train_kind(kind, on_epoch)``; the better on validation is
    the fusion model."""
    outcomes = {
        kind: train_kind(kind, (lambda r, k=kind: on_epoch(k, r)) if on_epoch else None) for kind in FUSION_KINDS
    }
    scores = {kind: outcome.validation_macro_f1 for kind, outcome in outcomes.items()}
    best = outcomes[max(scores, key=scores.get)]
    best.extra["fusion_validation_macro_f1"] = scores
    return best, scores


def train_baseline(data: TrainingData, *, C: float = 4.0, seed: int = 42) -> ModelOutcome:  # noqa: N803 - sklearn's name
    """TF-IDF of the model text + one-vs-rest logistic regression."""
    train_rows = data.rows("train")
    texts = np.asarray(data.texts, dtype=object)
    pipeline = Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=100_000, strip_accents="unicode"
                ),
            ),
            (
                "classifier",
                OneVsRestClassifier(LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)),
            ),
        ]
    )
    pipeline.fit(texts[train_rows], data.labels[train_rows])
    return _evaluate(
        "baseline_model", "tfidf_logreg", pipeline, data, lambda rows: pipeline.predict_proba(texts[rows]), data.rows
    )


def late_fusion(data: TrainingData, report_dirs: dict[str, Path]) -> ModelOutcome:
    """The average of other models' validation and test probabilities, each model counted where it has
    any (the image model on movies with a poster). It learns nothing from train: the members did; only
    its thresholds are tuned, on validation."""
    position = {int(i): n for n, i in enumerate(data.ids)}
    sums = np.zeros((len(data.ids), len(data.classes)))
    counts = np.zeros(len(data.ids))
    for name, report_dir in report_dirs.items():
        with np.load(report_dir / PROBABILITIES_FILE, allow_pickle=False) as member:
            if member["classes"].tolist() != data.classes:
                raise ValueError(f"{name} was trained on other labels ({member['classes'].tolist()}): retrain it")
            for split in ("validation", "test"):
                rows = [position.get(int(i), -1) for i in member[f"{split}_ids"]]
                if min(rows, default=0) < 0 or not (data.split[rows] == split).all():
                    raise ValueError(f"{name} was evaluated on other {split} movies than today's: retrain it")
                sums[rows] += member[f"{split}_probabilities"]
                counts[rows] += 1
    scored = data.rows("validation") | data.rows("test")
    if (counts[scored] == 0).any():
        raise ValueError("some validation or test movies have no member's probabilities")

    def probabilities_for(rows: np.ndarray) -> np.ndarray:
        return (sums[rows] / counts[rows, None]).astype(np.float32)

    return _evaluate(
        "late_fusion_model",
        "late_fusion",
        None,
        data,
        probabilities_for,
        data.rows,
        extra={"members": list(report_dirs)},
    )
