"""The movie the model reads and what it answers, described once: each input field with its type,
limits and example, the pyfunc model's MLflow signature, and the output columns. The pyfunc model,
MLflow logging, the ``predict`` command, the HTTP API and its page all take their fields from here.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from genre_pipeline.dataset.cleaning import METADATA_COLUMNS, metadata_fields

MAX_OVERVIEW_CHARS = 20_000  # a plot overview is a few hundred characters; encoders truncate long ones anyway
MAX_SHORT_TEXT_CHARS = 1_000  # a tagline, a title


@dataclasses.dataclass(frozen=True)
class InputField:
    name: str
    kind: str  # "text", "image", "number" or "integer"
    description: str
    example: object = None
    required: bool = False
    max_length: int | None = None  # characters, for text
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None  # the predict command's option, where it differs from --name

    @property
    def option(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"

    def problem(self, value) -> str | None:
        """Why ``value`` is not acceptable for this field (None when it is, or when it is absent)."""
        if value is None:
            return "is required" if self.required else None
        if self.kind == "text":
            if self.required and not str(value).strip():
                return "is empty"
            if self.max_length is not None and len(str(value)) > self.max_length:
                return f"has {len(str(value)):,} characters, over the {self.max_length:,} the model takes"
        if self.kind in ("number", "integer"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                return f"is not a number: {value!r}"
            if self.minimum is not None and value < self.minimum:
                return f"is {value}, below the minimum {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"is {value}, over the maximum {self.maximum:g}"
        return None


FIELDS = (
    InputField(
        "overview",
        "text",
        "The plot overview (required).",
        "A retired gunslinger rides into a frontier town ruled by a ruthless cattle baron.",
        required=True,
        max_length=MAX_OVERVIEW_CHARS,
    ),
    InputField("tagline", "text", "The tagline.", "Justice rides alone.", max_length=MAX_SHORT_TEXT_CHARS),
    InputField("title", "text", "The title.", "The Long Ride", max_length=MAX_SHORT_TEXT_CHARS),
    InputField("poster", "image", "The poster image file."),
    InputField("original_language", "text", "ISO 639-1, e.g. en, fr, ja", "en", max_length=12, flag="--language"),
    InputField("runtime", "number", "minutes", 104.0, minimum=0, maximum=2_000),
    InputField("release_year", "integer", "release year", 1994, minimum=1870, maximum=2100, flag="--year"),
    InputField("vote_average", "number", "TMDb's average vote", 6.8, minimum=0, maximum=10),
    # The most-voted movie on TMDb has about 40,000 votes: a billion is a mistake, not a blockbuster.
    InputField("vote_count", "integer", "TMDb's number of votes", 1200, minimum=0, maximum=10_000_000),
)
BY_NAME = {field.name: field for field in FIELDS}
INPUT_COLUMNS = tuple(BY_NAME)
METADATA_FIELDS = tuple(BY_NAME[name] for name in METADATA_COLUMNS)
# The metadata the model reads is the metadata the cleaned data set carries, field for field.
assert set(INPUT_COLUMNS) == {"overview", "tagline", "title", "poster", *METADATA_COLUMNS}


def problems(row: dict) -> list[tuple[InputField, str]]:
    """Each field of ``row`` that is not acceptable, with why (posters are checked as images: see
    ``genre_pipeline.images``)."""
    unknown = sorted(set(row) - set(BY_NAME))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an input of the model (it reads {', '.join(INPUT_COLUMNS)})")
    return [(f, why) for f in FIELDS if f.kind != "image" and (why := f.problem(row.get(f.name)))]


def example_frame() -> pd.DataFrame:
    """A movie as the pyfunc model reads it (no poster: the example stays small and readable)."""
    return pd.DataFrame({f.name: [f.example] for f in FIELDS if f.kind != "image"})


def probability_column(genre: str) -> str:
    return f"probability:{genre}"


def decision_column(genre: str) -> str:
    return f"decision:{genre}"


# What a logged model's MLflow metadata says of it, for callers that load it: its classes in output order,
# each class's tuned threshold, and which inputs it reads (text always; title, metadata, poster).
MODEL_METADATA_KEYS = ("classes", "thresholds", "reads")
# The pyfunc model's one param: the caller checked every row's fields (``problems``) already.
INPUTS_CHECKED = "inputs_checked"


def signature(classes: list[str]):
    """The pyfunc model's MLflow signature: the input fields, and per genre a probability and a decision."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    # Numbers of any type (JSON gives int64 for [104, 120] and float64 for [104, null]); the model
    # parses them itself and names a column that holds something else.
    types = {"text": "string", "image": "binary", "number": AnyType(), "integer": AnyType()}
    inputs = Schema([ColSpec(types[f.kind], f.name, required=f.required) for f in FIELDS])
    outputs = Schema(
        [ColSpec("double", probability_column(g)) for g in classes]
        + [ColSpec("boolean", decision_column(g)) for g in classes]
        + [ColSpec("boolean", "used_poster"), ColSpec("string", "poster_note"), ColSpec("string", "text_note")]
    )
    params = ParamSchema([ParamSpec(INPUTS_CHECKED, "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def rows_from_tmdb(movies: list[dict], poster_files: dict[int, Path]) -> pd.DataFrame:
    """``/movie/{id}`` responses as the model's input rows, with the poster bytes of the movies
    ``poster_files`` gives a file for."""
    rows = []
    for tmdb_movie in movies:
        path = poster_files.get(tmdb_movie["id"])
        rows.append(
            {
                "overview": tmdb_movie.get("overview"),
                "tagline": tmdb_movie.get("tagline"),
                "title": tmdb_movie.get("title"),
                "poster": path.read_bytes() if path is not None and path.is_file() else None,
                **metadata_fields(tmdb_movie),
            }
        )
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))
