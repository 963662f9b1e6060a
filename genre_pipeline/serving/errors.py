"""How the service refuses: every error as ``{"error": "..."}`` with its status, the body size limit
enforced before the app reads a body, and the handlers that turn exceptions into those answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from genre_pipeline.serving import inputs
from genre_pipeline.serving.access import request_id
from genre_pipeline.serving.batching import Overloaded
from genre_pipeline.serving.inputs import InputError
from genre_pipeline.serving.service import NotReady, Service

log = logging.getLogger(__name__)
NOT_READY_RETRY_S = 5


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _too_large(size: int, limit: int) -> str:
    return f"the request is {inputs.size_over(size, limit)} (or more) that this server accepts"


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
            response = error_response(413, _too_large(int(declared), self.max_bytes))
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


def register_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(InputError)
    async def refused(request: Request, error: InputError):
        return error_response(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, error: Overloaded):
        service.metrics.shed.labels(error.reason).inc()
        message = f"{error}: retry after {error.retry_after_s} s"
        return error_response(503, message, {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, error: NotReady):
        message = f"no champion is loaded yet ({service.not_ready_reason()})"
        return error_response(503, message, {"Retry-After": str(NOT_READY_RETRY_S)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(422, inputs.describe_validation_error(list(error.errors())))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("error answering %s %s (request %s)", request.method, request.url.path, request_id.get())
        return error_response(500, "the server failed to answer this request; its log says why")
