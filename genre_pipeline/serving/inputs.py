"""What a prediction request may carry, checked before the model sees it; every refusal says why in
words a person understands."""

from __future__ import annotations

import base64
import binascii
import json

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from genre_pipeline.images import PosterBytes, PosterError
from genre_pipeline.models import movie as model_input

MAX_POSTER_BYTES = 8 * 1024 * 1024  # TMDb's original-size posters are a few MB at most
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 256
MOVIE_EXAMPLE = '{"overview": "..."}'
BATCH_EXAMPLE = '{"movies": [{"overview": "..."}, ...]}'


class InputError(ValueError):
    """A request the server refuses, with the HTTP status that says why (4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class _MovieChecks(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @pydantic.field_validator("overview", check_fields=False)
    @classmethod
    def _overview_not_empty(cls, overview: str) -> str:
        if not overview:
            raise ValueError("empty; give the movie's plot overview")
        return overview


def _json_field(field: model_input.InputField) -> tuple:
    """A movie field as JSON carries it, with the limits ``movie`` gives it."""
    kind = {"text": str, "number": float, "integer": int}[field.kind]
    limits = {"max_length": field.max_length, "ge": field.minimum, "le": field.maximum}
    if field.kind == "number":
        limits["allow_inf_nan"] = False  # NaN is no runtime: say so, not "should be <= 2000"
    declared = {k: v for k, v in limits.items() if v is not None}
    if field.required:
        return kind, Field(description=field.description, **declared)
    return kind | None, Field(None, description=field.description, **declared)


# One movie as JSON: the model's input fields, the poster as base64.
Movie = pydantic.create_model(
    "Movie",
    __base__=_MovieChecks,
    __doc__="One movie as JSON: the model's input fields, the poster as base64.",
    **{field.name: _json_field(field) for field in model_input.FIELDS if field.kind != "image"},
    poster_base64=(str | None, Field(None, description="The poster image file, base64-encoded.")),
)


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    movies: list[Movie] = Field(min_length=1, max_length=MAX_BATCH)


def describe_validation_error(error: pydantic.ValidationError | list[dict]) -> str:
    """pydantic's errors as one line per field: 'movies[2].overview: field required'."""
    problems = []
    for item in error.errors() if isinstance(error, pydantic.ValidationError) else error:
        location = ""
        for part in item.get("loc", ()):
            if part == "body":
                continue
            location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        if item.get("type") == "missing":
            message = "required"
        elif item.get("type") == "extra_forbidden":
            message = "not a field this API knows (see GET /docs)"
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def _mebibytes(size: int) -> str:
    return f"{size / 2**20:.2f}".rstrip("0").rstrip(".") + " MiB"


def size_over(size: int, limit: int) -> str:
    """ "<size>, over the <limit> limit" in MiB as the docs give limits, in bytes where MiB would show
    the same figure twice."""
    if _mebibytes(size) == _mebibytes(limit):
        return f"{size:,} bytes, over the {limit:,}-byte ({_mebibytes(limit)}) limit"
    return f"{_mebibytes(size)}, over the {_mebibytes(limit)} limit"


def json_object(body: bytes, example: str) -> dict:
    """The body's JSON object; InputError (400) otherwise, giving ``example``, the shape the route takes."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"the body is not valid JSON: {error}", 400) from None
    except RecursionError:
        raise InputError("the body's JSON is nested deeper than a movie ever is", 400) from None
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object, for example {example}", 400)
    return payload


def parse_json(body: bytes, model: type[BaseModel]) -> BaseModel:
    """One movie's JSON body as ``model``."""
    return validated(json_object(body, MOVIE_EXAMPLE), model)


def validated(payload: dict, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as error:
        raise InputError(describe_validation_error(error)) from None


def checked_poster(data: bytes, where: str = "poster") -> PosterBytes:
    """The poster's bytes, verified and decoded once, if they are an image the model can read, else
    InputError (413 for a file or an image too large, 422 for anything else)."""
    if len(data) > MAX_POSTER_BYTES:
        raise InputError(f"{where}: the file is {size_over(len(data), MAX_POSTER_BYTES)}", 413)
    try:
        return PosterBytes.of(data)
    except PosterError as error:
        raise InputError(f"{where}: not a usable image ({error})", 413 if error.kind == "too_large" else 422) from None


def decoded_poster(encoded: str, where: str) -> bytes:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: poster_base64 is not base64") from None
    return checked_poster(data, where)


def model_row(movie: Movie, poster: bytes | None = None, where: str = "poster") -> dict:
    """The pyfunc model's input row for one movie."""
    row = movie.model_dump(exclude={"poster_base64"})
    if poster is None and movie.poster_base64:
        poster = decoded_poster(movie.poster_base64, where)
    row["poster"] = poster
    return row


def inputs_used(row: dict, used_poster: bool, *, reads_titles: bool, reads_metadata: bool) -> dict:
    """Which of the request's inputs the model read: a title or metadata is read only by a model that
    has a member for it."""
    return {
        "overview": True,
        "tagline": bool(row.get("tagline")),
        "title": bool(row.get("title")) and reads_titles,
        "metadata": [f.name for f in model_input.METADATA_FIELDS if row.get(f.name) is not None]
        if reads_metadata
        else [],
        "poster": used_poster,
    }
