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

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS
from genre_pipeline.dataset.labels import LabelSet
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models import finetune, metrics
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.embeddings import Embeddings
from genre_pipeline.models.heads import build_head
from genre_pipeline.models.members import (
    EncoderRef,
    HeadMember,
    LinearMember,
    MemberInputs,
    NeighboursMember,
    TfidfMember,
)
from genre_pipeline.models.stacking import Stacker, out_of_fold
from genre_pipeline.models.thresholds import apply_thresholds, top3_rule, tune_thresholds
from genre_pipeline.models.training import TrainingConfig, described, set_seeds, train_head


@dataclasses.dataclass
class TrainingData:
    ids: np.ndarray
    titles: list[str]
    texts: list[str]
    split: np.ndarray
    labels: np.ndarray
    classes: list[str]
    text_features: dict[str, np.ndarray]  # cached embeddings by text encoder, when frozen encoders are used
    poster_features: dict[str, np.ndarray]  # cached poster features by image encoder (zeros without a poster)
    has_poster: np.ndarray
    poster_files: list[Path | None]  # the verified poster of each movie, for fine-tuning
    metadata: pd.DataFrame  # METADATA_COLUMNS, one row per movie

    def rows(self, split: str, *, posters_only: bool = False) -> np.ndarray:
        mask = self.split == split
        return mask & self.has_poster if posters_only else mask

    def inputs(self, rows: np.ndarray | None = None) -> MemberInputs:
        everything = MemberInputs(
            self.texts,
            self.titles,
            self.text_features,
            self.poster_features,
            self.has_poster,
            self.metadata.reset_index(drop=True),
        )
        return everything if rows is None else everything.take(rows)


def _matrix_by_id(embeddings: Embeddings, ids: np.ndarray, needed: np.ndarray, modality: str) -> np.ndarray:
    """The embedding of each of ``ids`` (zeros where ``needed`` is False)."""
    rows = embeddings.by_id()
    missing = [int(i) for i, need in zip(ids, needed) if need and int(i) not in rows]
    if missing:
        raise ValueError(
            f"{len(missing)} labelled movies have no {modality} embedding (e.g. {missing[:5]}): "
            f"materialize {modality}_embeddings"
        )
    matrix = np.zeros((len(ids), embeddings.vectors.shape[1]), dtype=np.float32)
    for n, (movie_id, need) in enumerate(zip(ids, needed)):
        if need:
            matrix[n] = embeddings.vectors[rows[int(movie_id)]]
    return matrix


def assemble(
    movies: pd.DataFrame,
    label_set: LabelSet,
    splits: pd.DataFrame,
    text: dict[str, Embeddings],
    image: dict[str, Embeddings],
    poster_root: Path,
) -> TrainingData:
    """Align labels, splits, texts, posters, metadata and cached features (by encoder) by movie id."""
    missing_columns = [c for c in METADATA_COLUMNS if c not in movies.columns]
    if missing_columns:
        raise ValueError(f"movies_clean has no {missing_columns} columns: materialize movies_clean again")
    movies = movies.set_index("id")
    split_of = splits.set_index("id")["split"]
    ids = label_set.ids
    has_poster = (movies.loc[ids, "poster_status"] == poster_files.OK).to_numpy()
    everyone = np.ones(len(ids), dtype=bool)
    return TrainingData(
        ids=ids,
        titles=movies.loc[ids, "title"].tolist(),
        texts=movies.loc[ids, "text"].tolist(),
        split=split_of.loc[ids].to_numpy(),
        labels=label_set.matrix,
        classes=label_set.classes,
        text_features={name: _matrix_by_id(e, ids, everyone, "text") for name, e in text.items()},
        poster_features={name: _matrix_by_id(e, ids, has_poster, "poster") for name, e in image.items()},
        has_poster=has_poster,
        poster_files=[poster_root / f if ok else None for f, ok in zip(movies.loc[ids, "poster_file"], has_poster)],
        metadata=movies.loc[ids, list(METADATA_COLUMNS)].reset_index(drop=True),
    )


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
    fine_tuned: finetune.EncoderWithHead | None = None  # the encoders were fine-tuned with the head

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


def _evaluate(name, kind, classifier, data: TrainingData, probabilities_for, rows_for, **extra) -> ModelOutcome:
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


def _rows_for(data: TrainingData, kind: str):
    """The image model uses movies with posters only."""
    return lambda split: data.rows(split, posters_only=kind == "image")


def _fit_head(
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
    untrained = HeadMember(kind, build_head(kind, **dims), text, image, dims)
    val_rows = _rows_for(data, kind)("validation")
    result = train_head(
        untrained.head,
        untrained.features(data.inputs(train_rows)),
        data.labels[train_rows],
        untrained.features(data.inputs(val_rows)),
        data.labels[val_rows],
        config,
        image_dim=dims["image_dim"] if kind.endswith("fusion") else 0,
        on_epoch=on_epoch,
    )
    return HeadMember(kind, result.model, text, image, dims), result


def _single(name: str, member, classes: list[str]) -> GenreClassifier:
    """A classifier that is one member; its thresholds are tuned by _evaluate."""
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
    rows_for = _rows_for(data, kind)
    member, result = _fit_head(kind, data, rows_for("train"), config, text, image, on_epoch)
    classifier = _single(name, member, data.classes)
    return _evaluate(
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
    config: finetune.FineTuneConfig,
    make_encoders,
    on_epoch=None,
) -> ModelOutcome:
    """The encoders fine-tuned together with the head. ``make_encoders()`` gives fresh pretrained
    (text, image) encoders on the training device, None for a modality the kind does not read.
    Evaluation runs the fine-tuned encoders as the deployed model does."""
    rows_for = _rows_for(data, kind)
    set_seeds(config.seed)
    text_encoder, image_encoder = make_encoders()
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
    member = HeadMember(kind, finetune.head_on_cpu(model), text, image, dims)
    classifier = _single(name, member, data.classes)

    def probabilities_for(rows: np.ndarray) -> np.ndarray:
        return classifier.probabilities(_fine_tuned_inputs(model, data, text, image, rows))

    return _evaluate(
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
    """Word and character TF-IDF of the model text + one logistic regression per genre."""
    train_rows = data.rows("train")
    member = TfidfMember.fit(data.inputs(train_rows), data.labels[train_rows], C=C, seed=seed)
    classifier = _single("baseline_model", member, data.classes)
    return _evaluate(
        "baseline_model",
        "tfidf_logreg",
        classifier,
        data,
        lambda rows: classifier.probabilities(data.inputs(rows)),
        data.rows,
    )


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """How the stacked classifier is built."""

    folds: int = described(5, "Cross-fitting folds of the train split for the members' out-of-fold probabilities.")
    tfidf_C: float = described(4.0, "Inverse regularization of the TF-IDF members' logistic regressions.")  # noqa: N815
    hide_movies: float = described(0.10, "Stacker training: share of movies shown without any metadata.")
    hide_fields: float = described(0.05, "Stacker training: share of the other metadata values hidden one by one.")
    stacker_bags: int = described(5, "Stacker: bags of boosted trees, fitted with different seeds and averaged.")
    seed: int = 42


def _member_fitters(data: TrainingData, head: TrainingConfig, stack: StackConfig, texts, image) -> dict:
    """name -> (fit(row mask) -> member, the rows it trains on): the stack's members."""

    def on(rows: np.ndarray):
        return data.inputs(rows), data.labels[rows]

    fitters = {
        "tfidf": (lambda rows: TfidfMember.fit(*on(rows), C=stack.tfidf_C, seed=stack.seed), data.rows("train")),
        "tfidf_title": (
            lambda rows: TfidfMember.fit(*on(rows), C=stack.tfidf_C, seed=stack.seed, with_title=True),
            data.rows("train"),
        ),
    }
    for ref in texts:
        fitters[f"text[{ref.name}]"] = (
            lambda rows, ref=ref: _fit_head("text", data, rows, head, ref, None)[0],
            data.rows("train"),
        )
        fitters[f"neighbours[{ref.name}]"] = (
            lambda rows, ref=ref: NeighboursMember.fit(*on(rows), ref),
            data.rows("train"),
        )
        fitters[f"linear[{ref.name}]"] = (
            lambda rows, ref=ref: LinearMember.fit(*on(rows), ref, seed=stack.seed),
            data.rows("train"),
        )
    if image is not None:
        fitters[f"poster[{image.name}]"] = (
            lambda rows: _fit_head("image", data, rows, head, None, image)[0],
            data.rows("train", posters_only=True),
        )
    return fitters


def _mask(data: TrainingData, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(data.ids), dtype=bool)
    mask[rows] = True
    return mask


def _reads_posters(member) -> bool:
    return any(ref.modality == "image" for ref in member.encoders)


def _from_split_scores(data: TrainingData, scores: dict[str, np.ndarray]):
    """``probabilities_for`` (see _evaluate) over probabilities computed once per split, for row masks
    within one split."""

    def probabilities_for(rows: np.ndarray) -> np.ndarray:
        split = data.split[rows][0]
        return scores[split][rows[data.rows(split)]]

    return probabilities_for


def _stack_variant(name, data, members, oof, scored, poster_members, *, use_metadata, stack) -> ModelOutcome:
    """A stacker fitted on the members' out-of-fold probabilities of the train split, evaluated on the
    members' validation and test probabilities (``scored``, by split then member)."""
    train_rows = data.rows("train")
    stacker = Stacker.fit(
        oof,
        poster_members,
        data.inputs(train_rows),
        data.labels[train_rows],
        use_metadata=use_metadata,
        hide_movies=stack.hide_movies,
        hide_fields=stack.hide_fields,
        bags=stack.stacker_bags,
        seed=stack.seed,
    )
    stacked = {
        split: stacker.probabilities(by_member, data.inputs(data.rows(split))) for split, by_member in scored.items()
    }
    return _evaluate(
        name,
        "stack",
        GenreClassifier(name, list(data.classes), np.zeros(0), members, stacker),
        data,
        _from_split_scores(data, stacked),
        data.rows,
        extra={"metadata": use_metadata},
    )


def _without_posters(data: TrainingData, outcome: ModelOutcome, test_scores: dict[str, np.ndarray]) -> float:
    """Test macro-F1 of the same model when no test movie has a usable poster (only the members that
    read posters are asked again)."""
    rows = data.rows("test")
    inputs = data.inputs(rows)
    inputs.has_poster = np.zeros(len(inputs), dtype=bool)
    inputs.poster_features = {k: np.zeros_like(v) for k, v in inputs.poster_features.items()}
    members = outcome.classifier.members
    by_member = {n: m.probabilities(inputs) if _reads_posters(m) else test_scores[n] for n, m in members.items()}
    probabilities = outcome.classifier.stacker.probabilities(by_member, inputs)
    predictions = apply_thresholds(probabilities, outcome.thresholds)
    return metrics.evaluate(data.labels[rows], predictions, probabilities, data.classes)["summary"]["macro_f1"]


def train_stack(
    data: TrainingData,
    head: TrainingConfig,
    stack: StackConfig,
    texts: list[EncoderRef],
    image: EncoderRef | None,
    progress=None,
) -> ModelOutcome:
    """The stacked classifier: members (TF-IDF, a text head per text encoder, the poster head)
    cross-fitted on train, a stacker on their out-of-fold probabilities and the metadata, thresholds
    tuned on validation. Also measures each member alone and the stack without metadata and
    without posters, on the same test split. Each member scores validation and test once."""
    members, oof, member_scores = {}, {}, {}
    scored = {"validation": {}, "test": {}}
    train_rows = np.flatnonzero(data.rows("train"))
    position = {row: n for n, row in enumerate(train_rows)}
    for name, (fit, fit_rows) in _member_fitters(data, head, stack, texts, image).items():
        rows = np.flatnonzero(fit_rows)
        folded = out_of_fold(
            lambda a, b, fit=fit: fit(_mask(data, a)).probabilities(data.inputs(b)), rows, stack.folds, stack.seed
        )
        oof[name] = np.full((len(train_rows), len(data.classes)), 0.5, dtype=np.float32)
        oof[name][[position[r] for r in rows]] = folded
        members[name] = fit(fit_rows)
        for split, by_member in scored.items():
            by_member[name] = members[name].probabilities(data.inputs(data.rows(split)))
        posters_only = _reads_posters(members[name])
        alone = _evaluate(
            name,
            members[name].kind,
            None,
            data,
            _from_split_scores(data, {split: by_member[name] for split, by_member in scored.items()}),
            lambda split, posters_only=posters_only: data.rows(split, posters_only=posters_only),
        )
        member_scores[name] = {
            "validation_macro_f1": alone.validation_macro_f1,
            "test_macro_f1": alone.test["summary"]["macro_f1"],
            "test_movies": len(alone.test_ids),
            **{f"test_{k}_macro_f1": v["macro_f1"] for k, v in alone.test_subsets.items()},
        }
        if progress:
            progress(f"member {name}: validation macro-F1 {alone.validation_macro_f1:.4f}")
    poster_members = [name for name, member in members.items() if _reads_posters(member)]
    variant = dict(data=data, members=members, oof=oof, scored=scored, poster_members=poster_members, stack=stack)
    without_metadata = _stack_variant("stacked_model", use_metadata=False, **variant)
    outcome = _stack_variant("stacked_model", use_metadata=True, **variant)
    outcome.extra.update(
        members=member_scores,
        test_macro_f1_without_metadata=without_metadata.test["summary"]["macro_f1"],
        validation_macro_f1_without_metadata=without_metadata.validation_macro_f1,
        test_macro_f1_without_posters=_without_posters(data, outcome, scored["test"]),
        folds=stack.folds,
    )
    return outcome
