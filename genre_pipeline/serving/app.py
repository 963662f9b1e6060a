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

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from genre_pipeline.champion import registry
from genre_pipeline.models import movie as model_input
from genre_pipeline.serving import inputs
from genre_pipeline.serving.access import AccessLog, request_id
from genre_pipeline.serving.auth import Gatekeeper
from genre_pipeline.serving.batching import BatchingOptions, MicroBatcher, Overloaded
from genre_pipeline.serving.inputs import MAX_BODY_BYTES, MAX_POSTER_BYTES, Batch, InputError, Movie
from genre_pipeline.serving.metrics import ServingMetrics
from genre_pipeline.serving.reloader import ChampionReloader, ServedModel

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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class NotReady(Exception):
    """No champion is loaded yet (the server has just started, or the registry has none)."""


NOT_READY_RETRY_S = 5


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


def create_app(
    reloader: ChampionReloader,
    *,
    batching: BatchingOptions | None = None,
    gatekeeper: Gatekeeper | None = None,
    metrics: ServingMetrics | None = None,
) -> FastAPI:
    """The API around ``reloader``'s champion. Prediction requests go through a MicroBatcher (one model
    call for concurrent requests, a bounded queue); ``gatekeeper`` checks API keys and rate limits on
    them (none: open, unlimited)."""
    metrics = metrics or ServingMetrics()
    gatekeeper = gatekeeper or Gatekeeper([])

    def not_ready_reason() -> str:
        return reloader.last_error or "the champion is loading"

    def current_model() -> ServedModel:
        served = reloader.current
        if served is None:
            raise NotReady()
        return served

    def predict_current(rows: list[dict]) -> tuple[ServedModel, list]:
        served = current_model()  # kept for the whole call, whatever a reload does meanwhile
        return served, served.predict_rows(rows)

    batcher = MicroBatcher(
        predict_current,
        batching or BatchingOptions(),
        observe=metrics.observe_batch,
        on_queue=metrics.queue_depth.set,
    )
    reloader.on_load = lambda served: metrics.serving(served.version, served.predictor.info["model"])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        reloader.start()
        batcher.start()
        yield
        await batcher.stop()
        reloader.stop()

    # FastAPIOffline: /docs and /redoc with their assets served from the process (a PyPI package), not a CDN.
    app = FastAPIOffline(
        title="genre_pipeline",
        summary="Movie genres from an overview, a tagline, TMDb metadata and a poster, by the registered champion.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # Added last: outermost, so that every answer (a 413 too) gets its id and is counted.
    app.add_middleware(AccessLog, observe=metrics.observe_request)

    async def admitted(request: Request) -> None:
        caller, refusal = gatekeeper.check(request.headers, request.client.host if request.client else "-")
        request.state.caller = caller
        if refusal is not None:
            if refusal.status == 429:
                metrics.rate_limited.inc()
            raise HTTPException(refusal.status, refusal.message, headers=refusal.headers)

    @app.exception_handler(InputError)
    async def refused(request: Request, error: InputError):
        return _error(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, error: Overloaded):
        metrics.shed.labels(error.reason).inc()
        return _error(503, f"{error}: retry after {error.retry_after_s} s", {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, error: NotReady):
        message = f"no champion is loaded yet ({not_ready_reason()})"
        return _error(503, message, {"Retry-After": str(NOT_READY_RETRY_S)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return _error(422, inputs.describe_validation_error(list(error.errors())))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("error answering %s %s (request %s)", request.method, request.url.path, request_id.get())
        return _error(500, "the server failed to answer this request; its log says why")

    async def predict_rows(rows: list[dict]) -> tuple[ServedModel, list]:
        current_model()  # refuse at once rather than queue while nothing can answer
        try:
            served, predictions = await batcher.submit(rows)
        except ValueError as error:  # the model's own input checks
            raise InputError(str(error)) from None
        for prediction in predictions:
            metrics.count_genres(prediction.genres)
        return served, predictions

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC_DIR / "index.html"))

    def readiness() -> JSONResponse:
        served = reloader.current
        if served is None:
            return JSONResponse({"status": "not ready", "ready": False, "reason": not_ready_reason()}, status_code=503)
        return JSONResponse(
            {"status": "ok", "ready": True, "version": served.version, "reload_error": reloader.last_error}
        )

    @app.get("/health", summary="Ready: as /health/ready")
    async def health():
        return readiness()

    @app.get("/health/ready", summary="200 while a champion is loaded and answering, else 503 with the reason")
    async def ready():
        return readiness()

    @app.get("/health/live", summary="200 while the process answers at all (it may still be loading)")
    async def live():
        return {"status": "alive"}

    @app.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model", summary="The served champion: version, run, labels, thresholds, metrics")
    async def model():
        served = current_model()
        predictor = served.predictor
        return model_summary(served) | {
            "api_key_required": gatekeeper.requires_key,
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
        dependencies=[Depends(admitted)],
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
        dependencies=[Depends(admitted)],
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
