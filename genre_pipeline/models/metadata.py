"""TMDb metadata as model input: original language, runtime, release year and the vote figures.

Every field is optional at prediction time. A missing value is NaN, a state the stacker's
trees route on their own, and the stacker is trained with fields hidden at random, so a movie
without a runtime, or with a language it never saw, gets a prediction the model learned for
that case: never a crash, and never a silent zero read as a real value.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS

NUMERIC_COLUMNS = ("runtime", "release_year", "vote_average", "vote_count")


def is_missing(value) -> bool:
    """An input cell with no value: None, or the NaN pandas puts in its place."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns with every unknown value as None: absent columns, NaN, empty languages,
    runtimes of 0 (TMDb's 'unknown'), and a vote average without votes. A value of the wrong type is
    an error that names the column."""
    rows = len(frame)
    out = {}
    for column in METADATA_COLUMNS:
        values = frame[column].tolist() if column in frame.columns else [None] * rows
        out[column] = [None if is_missing(v) else v for v in values]
    out["original_language"] = [
        (str(v).strip().lower() or None) if v is not None else None for v in out["original_language"]
    ]
    for column in NUMERIC_COLUMNS:
        parsed = []
        for v in out[column]:
            try:
                parsed.append(float(v) if v is not None else None)
            except (TypeError, ValueError):
                raise ValueError(f"metadata column {column!r} must be a number, got {v!r}") from None
        out[column] = parsed
    out["runtime"] = [v if v is not None and v > 0 else None for v in out["runtime"]]
    out["vote_average"] = [
        a if a is not None and c is not None and c > 0 else None for a, c in zip(out["vote_average"], out["vote_count"])
    ]
    return pd.DataFrame({column: pd.Series(out[column], dtype=object) for column in METADATA_COLUMNS})


def hide_at_random(frame: pd.DataFrame, row_share: float, field_share: float, rng: np.random.Generator):
    """A copy in which ``row_share`` of the movies lose all their metadata (a caller who gives none)
    and every other value is hidden with probability ``field_share``: training for missing inputs."""
    hidden = clean(frame)
    no_metadata = rng.random(len(hidden)) < row_share
    for column in METADATA_COLUMNS:
        hidden[column] = hidden[column].where(~(no_metadata | (rng.random(len(hidden)) < field_share)), None)
    return hidden


@dataclasses.dataclass
class MetadataEncoder:
    """Features from metadata: the language one-hot over the languages seen on at least
    ``min_movies`` training movies and 'other' (all NaN when unknown), and the numeric fields as
    they are (NaN when missing). A field no training movie has is left out: nothing was learned of it."""

    languages: list[str]
    numeric: list[str]  # the numeric columns training had values for

    @classmethod
    def fit(cls, frame: pd.DataFrame, min_movies: int = 15) -> "MetadataEncoder":
        frame = clean(frame)
        counts = frame["original_language"].dropna().value_counts()
        numeric = [column for column in NUMERIC_COLUMNS if frame[column].notna().any()]
        return cls(sorted(counts[counts >= min_movies].index.tolist()), numeric)

    @property
    def feature_names(self) -> list[str]:
        return [f"language={v}" for v in (*self.languages, "other")] + self.numeric

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        frame = clean(frame)
        position = {language: n for n, language in enumerate(self.languages)}
        one_hot = np.zeros((len(frame), len(self.languages) + 1))
        for row, language in enumerate(frame["original_language"]):
            if language is None:
                one_hot[row] = np.nan
            else:
                one_hot[row, position.get(language, len(self.languages))] = 1.0
        numeric = [[np.nan if v is None else v for v in frame[column]] for column in self.numeric]
        return np.column_stack([one_hot, *numeric]).astype(np.float64)

    def to_dict(self) -> dict:
        return {"languages": self.languages, "numeric": self.numeric}

    @classmethod
    def from_dict(cls, payload: dict) -> "MetadataEncoder":
        return cls(list(payload["languages"]), list(payload["numeric"]))
