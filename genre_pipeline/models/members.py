"""The models a genre classifier is built from, each from the inputs it reads to genre probabilities.

A member reads ``MemberInputs``: the model texts, encoder features keyed by encoder, which
movies have a usable poster, and the metadata. In training the features come from the cached
embeddings; in the deployed model the classifier computes them with the same encoders; so what
is evaluated is what is served. Members save to and load from a folder in plain formats
(scikit-learn's joblib for the TF-IDF pipeline and the linear models, numpy arrays and JSON for heads).
Predicting needs no PyTorch: heads run in numpy (``head_forward``), and the one-vs-rest logistic
regressions as one matrix product (``_OneVsRestLogistic``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.models.head_forward import head_probabilities

SPEC_FILE = "member.json"


class RowsOf(Mapping):
    """Some rows of each feature matrix, copied out when read: a member fitted on part of the data
    copies only the matrix it reads, and only while it reads it (at half a million movies each copy of
    every encoder's features at once would be gigabytes)."""

    def __init__(self, features: Mapping[str, np.ndarray], index: np.ndarray):
        self._features, self._index = features, index

    def __getitem__(self, key: str) -> np.ndarray:
        return self._features[key][self._index]

    def __iter__(self):
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


@dataclasses.dataclass
class MemberInputs:
    texts: list[str]  # the model text: overview and tagline
    titles: list[str]  # "" where unknown
    text_features: Mapping[str, np.ndarray]  # by EncoderRef.key
    poster_features: Mapping[str, np.ndarray]  # by EncoderRef.key; zeros where a movie has no usable poster
    has_poster: np.ndarray  # bool per movie
    metadata: pd.DataFrame  # the metadata columns, None where unknown

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: np.ndarray) -> "MemberInputs":
        index = np.flatnonzero(rows) if rows.dtype == bool else rows
        return MemberInputs(
            [self.texts[i] for i in index],
            [self.titles[i] for i in index],
            RowsOf(self.text_features, index),
            RowsOf(self.poster_features, index),
            self.has_poster[index],
            self.metadata.iloc[index].reset_index(drop=True),
        )


def tfidf_pipeline(C: float, seed: int) -> Pipeline:  # noqa: N803 - scikit-learn's name
    """Word 1-2-gram and character 3-5-gram (within words) TF-IDF, sublinear tf; one logistic
    regression per genre, classes balanced."""
    words = TfidfVectorizer(
        sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=100_000, strip_accents="unicode"
    )
    characters = TfidfVectorizer(
        sublinear_tf=True,
        analyzer="char_wb",
        ngram_range=(3, 5),
        min_df=3,
        max_features=150_000,
        strip_accents="unicode",
    )
    return Pipeline(
        [
            ("tfidf", FeatureUnion([("words", words), ("characters", characters)])),
            (
                "classifier",
                OneVsRestClassifier(
                    LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed), n_jobs=2
                ),
            ),
        ]
    )


class _OneVsRestLogistic:
    """A fitted one-vs-rest of binary logistic regressions as one weight matrix: the same probabilities
    as its ``predict_proba`` (multilabel: each genre's own sigmoid), without validating the input once per
    genre, which made up most of a single movie's prediction time. Any other estimator (a genre with one
    class in training gets a constant one) keeps scikit-learn's path."""

    def __init__(self, model: OneVsRestClassifier):
        self.model = model
        estimators = model.estimators_
        self.folded = model.multilabel_ and all(
            isinstance(e, LogisticRegression) and e.coef_.shape[0] == 1 for e in estimators
        )
        if self.folded:
            # (features, genres), C-contiguous: scipy copies a transposed view on every sparse product
            self.weights = np.ascontiguousarray(np.vstack([e.coef_ for e in estimators]).T)
            self.intercept = np.concatenate([e.intercept_ for e in estimators])

    def probabilities(self, features) -> np.ndarray:
        if not self.folded:
            return self.model.predict_proba(features).astype(np.float32)
        return expit(np.asarray(features @ self.weights) + self.intercept).astype(np.float32)


class TfidfMember:
    """TF-IDF of the model text, or with ``with_title`` of the title followed by the model text."""

    kind = "tfidf"
    encoders: tuple[EncoderRef, ...] = ()

    def __init__(self, pipeline: Pipeline, with_title: bool = False):
        self.pipeline, self.with_title = pipeline, with_title

    def documents(self, inputs: MemberInputs) -> np.ndarray:
        return self.documents_of(inputs, self.with_title)

    @staticmethod
    def documents_of(inputs: MemberInputs, with_title: bool) -> np.ndarray:
        if with_title:
            return np.asarray([f"{title} . {text}" for title, text in zip(inputs.titles, inputs.texts)], dtype=object)
        return np.asarray(inputs.texts, dtype=object)

    @classmethod
    def fit(
        cls,
        inputs: MemberInputs,
        labels: np.ndarray,
        *,
        C: float,  # noqa: N803
        seed: int,
        with_title: bool = False,
        vectorized: tuple[FeatureUnion, Any] | None = None,
    ):
        """Vectorizer and regressions fitted on ``inputs``; or, given ``vectorized`` (a fitted vectorizer
        and its matrix of ``inputs``' documents), the regressions only."""
        pipeline = tfidf_pipeline(C, seed)
        if vectorized is None:
            pipeline.fit(cls.documents_of(inputs, with_title), labels)
        else:
            vectorizer, features = vectorized
            pipeline.steps[0] = ("tfidf", vectorizer)
            pipeline.named_steps["classifier"].fit(features, labels)
        return cls(pipeline, with_title)

    @functools.cached_property
    def _classifier(self) -> _OneVsRestLogistic:
        return _OneVsRestLogistic(self.pipeline.named_steps["classifier"])

    def probabilities(self, inputs: MemberInputs) -> np.ndarray:
        return self._classifier.probabilities(self.pipeline.named_steps["tfidf"].transform(self.documents(inputs)))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline, directory / "tfidf.joblib")
        (directory / SPEC_FILE).write_text(json.dumps({"kind": self.kind, "with_title": self.with_title}))

    @classmethod
    def load(cls, directory: Path, spec: dict) -> "TfidfMember":
        return cls(joblib.load(directory / "tfidf.joblib"), spec["with_title"])


class NeighboursMember:
    """The genres of the most similar training movies by text embedding (cosine), weighted by
    softmax(similarity * ``sharpness``): a memory of the train split, unlike the trained heads.

    It remembers at most ``max_reference`` movies (a seeded sample of larger train splits): an exact
    search over all of them costs time per movie in proportion to the train split, so without the cap
    cross-fitting grows with its square, and the served model's size with the catalog."""

    kind = "neighbours"

    def __init__(self, text: EncoderRef, vectors: np.ndarray, labels: np.ndarray, k: int = 30, sharpness: float = 10.0):
        self.text, self.vectors, self.labels, self.k, self.sharpness = text, vectors, labels, k, sharpness

    @property
    def encoders(self) -> tuple[EncoderRef, ...]:
        return (self.text,)

    @classmethod
    def fit(
        cls, inputs: MemberInputs, labels: np.ndarray, text: EncoderRef, *, max_reference: int, seed: int
    ) -> "NeighboursMember":
        if max_reference < 1:
            raise ValueError(f"the neighbour vote needs a reference movie or more, got max_reference={max_reference}")
        vectors = inputs.text_features[text.key]
        if len(labels) > max_reference:
            rows = np.sort(np.random.default_rng(seed).choice(len(labels), max_reference, replace=False))
            vectors, labels = vectors[rows], labels[rows]
        return cls(text, np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.uint8))

    def probabilities(self, inputs: MemberInputs) -> np.ndarray:
        queries = np.asarray(inputs.text_features[self.text.key], dtype=np.float32)
        k = min(self.k, len(self.vectors))
        result = np.zeros((len(queries), self.labels.shape[1]), dtype=np.float32)
        for start in range(0, len(queries), 1024):
            similarity = queries[start : start + 1024] @ self.vectors.T
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) * self.sharpness)
            weights /= weights.sum(axis=1, keepdims=True)
            result[start : start + 1024] = (self.labels[nearest] * weights[..., None]).sum(axis=1)
        return result

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "neighbours.npz", vectors=self.vectors, labels=self.labels)
        spec = {"kind": self.kind, "text": self.text.to_dict(), "k": self.k, "sharpness": self.sharpness}
        (directory / SPEC_FILE).write_text(json.dumps(spec))

    @classmethod
    def load(cls, directory: Path, spec: dict) -> "NeighboursMember":
        with np.load(directory / "neighbours.npz", allow_pickle=False) as saved:
            vectors, labels = saved["vectors"], saved["labels"]
        return cls(EncoderRef(**spec["text"]), vectors, labels, spec["k"], spec["sharpness"])


class LinearMember:
    """One logistic regression per genre on a text encoder's embeddings."""

    kind = "linear"

    def __init__(self, text: EncoderRef, model: OneVsRestClassifier):
        self.text, self.model = text, model
        self._classifier = _OneVsRestLogistic(model)

    @property
    def encoders(self) -> tuple[EncoderRef, ...]:
        return (self.text,)

    @classmethod
    def fit(cls, inputs: MemberInputs, labels: np.ndarray, text: EncoderRef, *, C: float = 2.0, seed: int = 42):  # noqa: N803
        model = OneVsRestClassifier(
            LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed), n_jobs=2
        )
        return cls(text, model.fit(inputs.text_features[text.key], labels))

    def probabilities(self, inputs: MemberInputs) -> np.ndarray:
        return self._classifier.probabilities(inputs.text_features[self.text.key])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.model, directory / "linear.joblib")
        (directory / SPEC_FILE).write_text(json.dumps({"kind": self.kind, "text": self.text.to_dict()}))

    @classmethod
    def load(cls, directory: Path, spec: dict) -> "LinearMember":
        return cls(EncoderRef(**spec["text"]), joblib.load(directory / "linear.joblib"))


class HeadMember:
    """A genre head on encoder features: text, image (posters only) or a fusion of both; trained in
    PyTorch (``heads``), kept and run as numpy arrays."""

    def __init__(
        self, kind: str, weights: dict[str, np.ndarray], text: EncoderRef | None, image: EncoderRef | None, dims
    ):
        self.kind, self.weights, self.text, self.image = kind, weights, text, image
        self.dims = dict(dims)  # text_dim, image_dim, n_labels: what heads.build_head needs

    @classmethod
    def from_module(cls, kind: str, module, text: EncoderRef | None, image: EncoderRef | None, dims) -> "HeadMember":
        """A member from a trained PyTorch head (``heads.build_head``)."""
        weights = {k: v.detach().cpu().float().numpy().copy() for k, v in module.state_dict().items()}
        return cls(kind, weights, text, image, dims)

    @property
    def encoders(self) -> tuple[EncoderRef, ...]:
        return tuple(e for e in (self.text, self.image) if e is not None)

    def features(self, inputs: MemberInputs) -> np.ndarray:
        if self.kind == "text":
            return inputs.text_features[self.text.key]
        if self.kind == "image":
            return inputs.poster_features[self.image.key]
        return np.hstack(
            [
                inputs.text_features[self.text.key],
                inputs.poster_features[self.image.key],
                inputs.has_poster[:, None].astype(np.float32),
            ]
        )

    def probabilities(self, inputs: MemberInputs) -> np.ndarray:
        features = np.ascontiguousarray(self.features(inputs), dtype=np.float32)
        return head_probabilities(self.kind, self.weights, features, self.dims)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "head.npz", **self.weights)
        spec = {
            "kind": self.kind,
            "dims": self.dims,
            "text": self.text.to_dict() if self.text else None,
            "image": self.image.to_dict() if self.image else None,
        }
        (directory / SPEC_FILE).write_text(json.dumps(spec))

    @classmethod
    def load(cls, directory: Path, spec: dict) -> "HeadMember":
        with np.load(directory / "head.npz", allow_pickle=False) as saved:
            weights = {name: saved[name] for name in saved.files}
        text = EncoderRef(**spec["text"]) if spec["text"] else None
        image = EncoderRef(**spec["image"]) if spec["image"] else None
        return cls(spec["kind"], weights, text, image, spec["dims"])


_LOADERS = {"tfidf": TfidfMember, "neighbours": NeighboursMember, "linear": LinearMember}


def load_member(directory: Path):
    spec = json.loads((directory / SPEC_FILE).read_text())
    return _LOADERS.get(spec["kind"], HeadMember).load(directory, spec)
