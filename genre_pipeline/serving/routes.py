"""The service's routes, one router per concern: the page, health, the model and metrics, predictions,
and the Open Inference Protocol (V2) beside them."""

from __future__ import annotations

import dataclasses
import datetime
from importlib import resources
from importlib.metadata import version as package_version

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from genre_pipeline.champion import registry
from genre_pipeline.models import movie as model_input
from genre_pipeline.serving import examples, inputs, open_inference
from genre_pipeline.serving.inputs import MAX_POSTER_BYTES, Batch, InputError, Movie
from genre_pipeline.serving.reloader import ServedModel
from genre_pipeline.serving.service import NotReady, Service, answer, model_summary

STATIC_DIR = resources.files("genre_pipeline.serving") / "static"
FORM_TEXT_FIELDS = set(Movie.model_fields) - {"poster_base64"}


def page() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(STATIC_DIR / "index.html"))

    return router


def health(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/health", summary="Ready: as /health/ready")
    async def health_():
        return service.readiness()

    @router.get("/health/ready", summary="200 while a champion is loaded and answering, else 503 with the reason")
    async def ready():
        return service.readiness()

    @router.get("/health/live", summary="200 while the process answers at all (it may still be loading)")
    async def live():
        return {"status": "alive"}

    return router


def model_and_metrics(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
    async def prometheus_metrics():
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/model", summary="The served champion: version, run, labels, thresholds, metrics")
    async def model():
        served = service.current_model()
        predictor = served.predictor
        return model_summary(served) | {
            "api_key_required": service.gatekeeper.requires_key,
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

    return router


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


def openapi_schema(model: type[BaseModel]) -> dict:
    """``model``'s JSON schema with the models it nests written in place. Given through ``openapi_extra``,
    pydantic's '#/$defs/...' references would point at the OpenAPI document's root, which has no $defs:
    /redoc refused the whole document ("Invalid reference token: $defs")."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


PREDICT_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": openapi_schema(Movie), "example": examples.MOVIE},
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


def predictions(service: Service) -> APIRouter:
    router = APIRouter(dependencies=[Depends(service.admitted)])

    @router.post(
        "/predict",
        summary="Genres for one movie: JSON, or a multipart form with a poster file",
        openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
        responses=examples.PREDICT_RESPONSES,
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
        served, (prediction,) = await service.predict_rows([row])
        return answer(served, row, prediction) | {"model": model_summary(served)}

    @router.post(
        "/predict/batch",
        summary=f"Genres for up to {inputs.MAX_BATCH} movies in one call (JSON)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": openapi_schema(Batch), "example": examples.BATCH_REQUEST}},
            }
        },
        responses=examples.BATCH_RESPONSES,
    )
    async def predict_batch(request: Request):
        if _media_type(request) != "application/json":
            raise InputError(f"/predict/batch takes application/json: {inputs.BATCH_EXAMPLE}", 415)
        payload = inputs.json_object(await request.body(), inputs.BATCH_EXAMPLE)
        if "movies" not in payload and "overview" in payload:
            raise InputError(
                f"/predict/batch takes a list of movies, {inputs.BATCH_EXAMPLE}; one movie goes to /predict"
            )
        batch = inputs.validated(payload, Batch)

        def rows() -> list[dict]:
            return [inputs.model_row(m, where=f"movies[{i}].poster_base64") for i, m in enumerate(batch.movies)]

        rows = await run_in_threadpool(rows)
        served, predictions = await service.predict_rows(rows)
        return {
            "model": model_summary(served),
            "predictions": [answer(served, row, p) for row, p in zip(rows, predictions)],
        }

    return router


def open_inference_protocol(service: Service) -> APIRouter:
    """The Open Inference Protocol's REST routes (serving.open_inference), for the registered model's
    served version; infer is behind the same keys, limits, batcher and shedding as /predict."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
    name_path, version_path = "/models/{name}", "/models/{name}/versions/{version}"

    def served_model(name: str, version: str | None) -> ServedModel:
        if name != registry.REGISTERED_MODEL:
            raise InputError(f"no model named {name!r}: this server serves {registry.REGISTERED_MODEL}", 404)
        served = service.current_model()
        if version is not None and version != served.version:
            raise InputError(f"{name} version {version} is not served; the champion is version {served.version}", 404)
        return served

    @router.get("", summary="Server metadata")
    async def server_metadata():
        return {
            "name": "genre_pipeline",
            "version": package_version("genre_pipeline"),
            "extensions": ["binary_tensor_data"],
        }

    @router.get("/health/live", summary="200 while the process answers")
    async def live():
        return {"live": True}

    @router.get("/health/ready", summary="200 while a champion is loaded, else 503")
    async def ready():
        loaded = service.reloader.current is not None
        return JSONResponse({"ready": loaded}, status_code=200 if loaded else 503)

    metadata_responses = {200: examples.json_response(examples.V2_METADATA)} | examples.errors(404, 503)

    def metadata(name: str, version: str | None) -> dict:
        served = served_model(name, version)
        return {
            "name": name,
            "versions": [served.version],
            "platform": "mlflow_pyfunc",
        } | open_inference.tensor_metadata(served.predictor.classes)

    @router.get(
        name_path, summary="Model metadata: the served version, input and output tensors", responses=metadata_responses
    )
    async def model_metadata(name: str):
        return metadata(name, None)

    @router.get(version_path, summary="Model metadata of one version (the served one)", responses=metadata_responses)
    async def model_version_metadata(name: str, version: str):
        return metadata(name, version)

    def readiness(name: str, version: str | None):
        try:
            served_model(name, version)
        except NotReady:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return {"name": name, "ready": True}

    @router.get(name_path + "/ready", summary="200 while the model is loaded, else 503")
    async def model_ready(name: str):
        return readiness(name, None)

    @router.get(version_path + "/ready", summary="200 while this version is the one loaded, else 503 or 404")
    async def model_version_ready(name: str, version: str):
        return readiness(name, version)

    infer_options = dict(
        dependencies=[Depends(service.admitted)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"example": examples.V2_INFER_REQUEST},
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                        "description": "The binary tensor data extension: Inference-Header-Content-Length "
                        "gives the JSON's length; the tensors' bytes follow it.",
                    },
                },
            }
        },
        responses=examples.V2_INFER_RESPONSES,
    )

    async def inference(request: Request, name: str, version: str | None) -> Response:
        served_model(name, version)
        if request.headers.get("content-encoding", "identity") != "identity":
            raise InputError("Content-Encoding is not accepted: send the request uncompressed", 415)
        body, header_length = await request.body(), request.headers.get(open_inference.BINARY_HEADER)
        infer_request = await run_in_threadpool(open_inference.read_request, body, header_length)
        served, predictions = await service.predict_rows(infer_request.rows)
        content, headers = open_inference.answer(
            infer_request, served.predictor.classes, predictions, model_name=name, version=served.version
        )
        return Response(content, headers=headers)

    @router.post(name_path + "/infer", summary="Genres for N movies as tensors", **infer_options)
    async def infer(request: Request, name: str):
        return await inference(request, name, None)

    @router.post(
        version_path + "/infer", summary="Genres for N movies by this version (the served one)", **infer_options
    )
    async def infer_version(request: Request, name: str, version: str):
        return await inference(request, name, version)

    return router
