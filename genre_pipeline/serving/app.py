"""The HTTP API and web page around the registered champion (FastAPI on uvicorn).

FastAPI rather than MLflow's scoring server: ``/invocations`` takes only MLflow's dataframe JSON, so it
has no multipart poster upload, no page, no per-genre thresholds in its answer, no way to refuse a bad
poster instead of predicting without it, and it loads one model for its lifetime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from genre_pipeline.models import movie as model_input
from genre_pipeline.models import registry
from genre_pipeline.serving import inputs
from genre_pipeline.serving.access import AccessLog, request_id
from genre_pipeline.serving.champion import ChampionWatcher, ServedModel
from genre_pipeline.serving.inputs import MAX_BODY_BYTES, MAX_POSTER_BYTES, Batch, InputError, Movie

log = logging.getLogger(__name__)
STATIC_DIR = resources.files("genre_pipeline.serving") / "static"
FORM_TEXT_FIELDS = set(Movie.model_fields) - {"poster_base64"}
JSON_EXAMPLE = {field.name: field.example for field in model_input.FIELDS if field.kind != "image"}


class BodyLimit:
    """Refuses a body over ``max_bytes`` with 413 before the app reads it: a declared Content-Length
    is checked at once (the body is then read and dropped, up to a bound, so the client sees the answer
    rather than a reset connection); a chunked body is counted as it arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            drained, more = 0, True
            while more and drained <= 4 * self.max_bytes:
                message = await receive()
                drained += len(message.get("body", b""))
                more = message.get("more_body", False)
            response = _error(413, _too_large(int(declared), self.max_bytes))
            return await response(scope, receive, send)

        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, _too_large(received, self.max_bytes))
            return message

        return await self.app(scope, counted, send)


def _too_large(size: int, limit: int) -> str:
    return f"the request is {inputs.size_over(size, limit)} (or more) that this server accepts"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def model_summary(served: ServedModel) -> dict:
    info = served.predictor.info
    return {
        "name": registry.REGISTERED_MODEL,
        "version": served.version,
        "model": info["model"],
        "run_id": info["run_id"],
    }


def answer(served: ServedModel, row: dict, prediction) -> dict:
    predictor = served.predictor
    return {
        "genres": prediction.genres,
        "scores": prediction.scores_as_dicts(),
        "inputs": inputs.inputs_used(
            row, prediction.used_poster, reads_titles=predictor.reads_titles, reads_metadata=predictor.reads_metadata
        ),
        "notes": prediction.notes,
    }


async def _form_row(request: Request) -> dict:
    """A form's fields and optional ``poster`` file (multipart only) as one model row."""
    form = await request.form(max_files=1, max_fields=len(FORM_TEXT_FIELDS) + 1, max_part_size=1024 * 1024)
    try:
        poster, fields = None, {}
        for key, value in form.multi_items():
            if key == "poster":
                if not isinstance(value, UploadFile):
                    raise InputError("poster: must be an image file, sent as a file part of the form")
                poster = await value.read(MAX_POSTER_BYTES + 1)
                if len(poster) > MAX_POSTER_BYTES:  # say the file's own size, not how much of it was read
                    raise InputError(
                        f"poster: the file is {inputs.size_over(value.size or len(poster), MAX_POSTER_BYTES)}", 413
                    )
            elif isinstance(value, UploadFile):
                raise InputError(f"{key}: only the poster may be a file")
            elif value.strip():  # an empty form field means "not given"
                fields[key] = value
        unknown = set(fields) - FORM_TEXT_FIELDS
        if unknown:
            raise InputError(f"{', '.join(sorted(unknown))}: not a field this API knows (see GET /docs)")
        movie = inputs.validated(fields, Movie)
        if poster is not None and len(poster) == 0:  # an empty file input: no poster chosen
            poster = None
        if poster is not None:
            poster = await run_in_threadpool(inputs.checked_poster, poster)
        return inputs.model_row(movie, poster)
    finally:
        await form.close()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def create_app(watcher: ChampionWatcher) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher.start()
        yield
        watcher.stop()

    app = FastAPI(
        title="genre_pipeline",
        summary="Movie genres from an overview, a tagline, TMDb metadata and a poster, by the registered champion.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(AccessLog)  # added last: outermost, so that every answer (a 413 too) gets its id

    @app.exception_handler(InputError)
    async def refused(request: Request, error: InputError):
        return _error(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return _error(422, inputs.describe_validation_error(list(error.errors())))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("error answering %s %s (request %s)", request.method, request.url.path, request_id.get())
        return _error(500, "the server failed to answer this request; its log says why")

    async def predict_rows(rows: list[dict]) -> tuple[ServedModel, list]:
        served = watcher.current  # kept for the whole request, whatever a reload does meanwhile
        try:
            return served, await run_in_threadpool(served.predict_rows, rows)
        except ValueError as error:  # the model's own input checks
            raise InputError(str(error)) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC_DIR / "index.html"))

    @app.get("/health", summary="Up, and which champion version answers")
    async def health():
        served = watcher.current
        return {"status": "ok", "version": served.version, "reload_error": watcher.last_error}

    @app.get("/model", summary="The served champion: version, run, labels, thresholds, metrics")
    async def model():
        served = watcher.current
        predictor = served.predictor
        return model_summary(served) | {
            "alias": registry.CHAMPION_ALIAS,
            "kind": predictor.info["kind"],
            "label_set": predictor.info["label_set"],
            "labels": predictor.classes,
            "thresholds": dict(zip(predictor.classes, map(float, predictor.thresholds))),
            "reads": {
                "poster": predictor.uses_posters,
                "title": predictor.reads_titles,
                "metadata": predictor.reads_metadata,
            },
            "text_encoders": predictor.info["text_encoders"],
            "image_encoder": predictor.info["image_encoder"],
            "metrics": predictor.headline_metrics(),
            # The fields a request may carry and their limits: the page sets its inputs from these.
            "inputs": [dataclasses.asdict(field) for field in model_input.FIELDS],
            "loaded_at": datetime.datetime.fromtimestamp(served.loaded_at, datetime.UTC).isoformat(),
        }

    @app.post(
        "/predict",
        summary="Genres for one movie: JSON, or a multipart form with a poster file",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": Movie.model_json_schema(), "example": JSON_EXAMPLE},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["overview"],
                            "properties": {name: {"type": "string"} for name in sorted(FORM_TEXT_FIELDS)}
                            | {"poster": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            }
        },
    )
    async def predict(request: Request):
        media_type = _media_type(request)
        if media_type == "application/json":
            movie = inputs.parse_json(await request.body(), Movie)
            row = await run_in_threadpool(inputs.model_row, movie)
        elif media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            row = await _form_row(request)
        else:
            raise InputError(
                f"Content-Type {media_type or '(none)'} is not accepted: send application/json or multipart/form-data",
                415,
            )
        served, (prediction,) = await predict_rows([row])
        return answer(served, row, prediction) | {"model": model_summary(served)}

    @app.post(
        "/predict/batch",
        summary=f"Genres for up to {inputs.MAX_BATCH} movies in one call (JSON)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Batch.model_json_schema()}},
            }
        },
    )
    async def predict_batch(request: Request):
        if _media_type(request) != "application/json":
            raise InputError('/predict/batch takes application/json: {"movies": [{"overview": ...}, ...]}', 415)
        batch = inputs.parse_json(await request.body(), Batch)

        def rows() -> list[dict]:
            return [inputs.model_row(m, where=f"movies[{i}].poster_base64") for i, m in enumerate(batch.movies)]

        rows = await run_in_threadpool(rows)
        served, predictions = await predict_rows(rows)
        return {
            "model": model_summary(served),
            "predictions": [answer(served, row, p) for row, p in zip(rows, predictions)],
        }

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app
