"""The MLflow pyfunc model that goes from raw inputs (overview, tagline, poster bytes, metadata; see
``movie``) to a probability and a decision per genre, around a saved GenreClassifier and the encoders
it reads."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS, model_text, normalize_text
from genre_pipeline.images import PosterBytes, PosterError
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.encoders import EncoderRef, build_encoder, cache, runtime
from genre_pipeline.models.encoders.onnx_backend import configured_backend
from genre_pipeline.models.members import MemberInputs
from genre_pipeline.models.metadata import is_missing
from genre_pipeline.models.movie import BY_NAME, INPUTS_CHECKED, decision_column, probability_column

log = logging.getLogger(__name__)
OVERVIEW = BY_NAME["overview"]
ARTIFACT_KEY = "classifier"


def load_encoders(refs: list[EncoderRef], root: Path) -> dict:
    """The encoders by key, each on the backend it was trained with unless ``GENRE_PIPELINE_ENCODER_BACKEND``
    says otherwise: the graph the classifier folder records, without PyTorch, when this machine has it;
    else bundled or installed weights by name, or fine-tuned ones from ``root``, through PyTorch."""
    encoders = {}
    for ref in refs:
        backend = configured_backend(ref.backend)
        recorded = runtime.load_runtime(ref.key, root) if backend == ref.backend else None
        if recorded is not None:
            encoders[ref.key] = recorded
            log.info("encoder %s runs on %s (recorded graph)", ref.key, recorded.backend)
            continue
        encoders[ref.key] = build_encoder(dataclasses.replace(ref, backend=backend), root=root)
        # Reading the backend loads (or exports) the graph now rather than at the first prediction.
        log.info("encoder %s runs on %s", ref.key, encoders[ref.key].backend)
    return encoders


def _column(frame: pd.DataFrame, name: str) -> list:
    """An optional input column's values; None for every row when the column is absent."""
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _text_of(value) -> str:
    return "" if is_missing(value) else normalize_text(str(value))


def _poster_of(value):
    """(The poster's verified bytes, which carry the decoded image, None), or (None, why not)."""
    if is_missing(value):
        return None, None
    if isinstance(value, PosterBytes):  # verified (so decoded) by the caller already
        return value, None
    if isinstance(value, str):  # base64, as JSON carries bytes (MLflow's scoring server decodes it first)
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error:
            return None, "the poster is neither image bytes nor base64"
    if not isinstance(value, (bytes, bytearray)) or not value:
        return None, "the poster is empty"
    try:
        return PosterBytes.of(bytes(value)), None
    except PosterError as error:
        return None, f"poster not usable ({error})"


def _text_notes(texts: list[str], classifier: GenreClassifier, encoders: dict) -> list[str | None]:
    """Per text, a note when it is longer than a text encoder reads (None otherwise)."""
    text_encoders = [encoders[ref.key] for ref in classifier.encoders if ref.modality == "text"]
    if not text_encoders:  # TF-IDF reads every word
        return [None] * len(texts)
    shortest = min(encoder.max_length for encoder in text_encoders)
    longest_counts = np.max([encoder.token_counts(texts) for encoder in text_encoders], axis=0)
    return [
        f"the text is {tokens} tokens long: the text encoders read only its first {shortest}"
        if tokens > shortest
        else None
        for tokens in longest_counts
    ]


def encode_inputs(
    frame: pd.DataFrame, classifier: GenreClassifier, encoders: dict, *, inputs_checked: bool = False
) -> tuple[MemberInputs, list, list]:
    """Raw input rows -> what the members read, per row why its poster was not used (None if it was, or
    if none was given), and per row whether its text was cut for the text encoders. An empty overview is
    an error: there is nothing to predict from (not checked again when the caller says it checked every
    row with ``movie.problems`` or the same limits)."""
    if "overview" not in frame.columns:
        raise ValueError("the input has no 'overview' column: every movie needs its plot overview")
    texts = []
    for row, (overview, tagline) in enumerate(zip(frame["overview"], _column(frame, "tagline"))):
        overview = _text_of(overview)
        refused = None if inputs_checked else OVERVIEW.problem(overview)
        if refused:
            raise ValueError(f"row {row}: the overview {refused}: give the movie's plot overview")
        texts.append(model_text(overview, _text_of(tagline)))
    titles = [_text_of(t) for t in _column(frame, "title")]
    if classifier.uses_posters:
        decoded = [_poster_of(value) for value in _column(frame, "poster")]
        posters, notes = [image for image, _ in decoded], [note for _, note in decoded]
    else:  # nothing reads a poster: none is decoded
        text_only = f"the model ({classifier.name}) reads text only: the poster was not used"
        posters = [None] * len(frame)
        notes = [None if is_missing(value) else text_only for value in _column(frame, "poster")]
    has_poster = np.array([p is not None for p in posters], dtype=bool)
    text_features, poster_features = {}, {}
    for ref in classifier.encoders:
        encoder = encoders[ref.key]
        if ref.modality == "text":
            text_features[ref.key] = encoder.encode(texts)
        else:
            features = np.zeros((len(texts), encoder.dim), dtype=np.float32)
            if has_poster.any():
                features[has_poster] = encoder.encode([p for p in posters if p is not None])
            poster_features[ref.key] = features
    metadata = frame.reindex(columns=list(METADATA_COLUMNS)).reset_index(drop=True)
    inputs = MemberInputs(texts, titles, text_features, poster_features, has_poster, metadata)
    return inputs, notes, _text_notes(texts, classifier, encoders)


# Logged as a model from code (MLflow's recommended form: no pickled Python object in the model).
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


class GenreClassifierModel(mlflow.pyfunc.PythonModel):
    """The pyfunc flavour: ``predict`` takes a DataFrame with ``overview`` and optionally ``tagline``,
    ``title``, ``poster`` (image bytes) and the metadata columns; it returns per genre ``probability:<genre>``
    and ``decision:<genre>`` (at or above the genre's tuned threshold), ``used_poster`` and the notes. The
    param ``inputs_checked`` says the caller checked every row already (the server and ``predict`` do)."""

    def load_context(self, context) -> None:
        root = self.classifier_dir = Path(context.artifacts[ARTIFACT_KEY])
        self.classifier = GenreClassifier.load(root)
        self.encoders = load_encoders(self.classifier.encoders, root)

    def reuse_embeddings(self, known: Callable[[EncoderRef], Mapping[str, np.ndarray]]) -> None:
        """Let each frozen encoder take the embedding of an input whose content key ``known(ref)`` holds
        (the embedding assets' cache for the encoder and backend ``ref`` names) instead of encoding it
        again: the pipeline scores validation and test movies that those assets encoded already. Not for
        fine-tuned encoders, nor when GENRE_PIPELINE_ENCODER_BACKEND runs another backend than trained."""
        for ref in self.classifier.encoders:
            if ref.weights is None and configured_backend(ref.backend) == ref.backend:
                encoder = cache.Reusing.unwrapped(self.encoders[ref.key])
                self.encoders[ref.key] = cache.Reusing(encoder, known(ref))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        checked = bool((params or {}).get(INPUTS_CHECKED))
        inputs, poster_notes, text_notes = encode_inputs(frame, self.classifier, self.encoders, inputs_checked=checked)
        probabilities = self.classifier.probabilities(inputs)
        decisions = self.classifier.decisions(probabilities)
        columns = {}
        for j, genre in enumerate(self.classifier.classes):
            columns[probability_column(genre)] = probabilities[:, j].astype(np.float64)
        for j, genre in enumerate(self.classifier.classes):
            columns[decision_column(genre)] = decisions[:, j].astype(bool)
        columns["used_poster"] = inputs.has_poster.astype(bool)
        columns["poster_note"] = [note or "" for note in poster_notes]
        columns["text_note"] = [note or "" for note in text_notes]
        return pd.DataFrame(columns)
