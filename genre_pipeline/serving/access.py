"""A request id on every answer, and one structured access-log line per request (JSON on stderr):
method, path, status, duration, client, caller (an API key's hash when keys are on) and request id;
never a body, so never an overview or poster. The same middleware counts each request for /metrics."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid

REQUEST_ID_HEADER = "x-request-id"
# A caller's own id is kept when it is a plain token (it then ties their logs to ours); else a new one.
_CALLER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def access_logger() -> logging.Logger:
    """``genre_pipeline.access``, writing one JSON line per record to stderr (set up once)."""
    logger = logging.getLogger("genre_pipeline.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class AccessLog:
    """ASGI middleware: the request id (the caller's X-Request-ID when it is a plain token) on the
    answer's headers and in ``request_id`` for what the request logs, and one access line."""

    def __init__(self, app, observe=lambda route, method, status, seconds: None):
        self.app, self.log, self.observe = app, access_logger(), observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = given if _CALLER_ID.fullmatch(given) else uuid.uuid4().hex
        token, started, status = request_id.set(rid), time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            client = scope.get("client") or ("-", 0)
            line = {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client": client[0],
            }
            caller = scope.get("state", {}).get("caller")  # set by the app when it checked the key
            if caller and caller != client[0]:
                line["caller"] = caller
            self.log.info(json.dumps(line))
            self.observe(route_of(scope), scope["method"], status, seconds)
            request_id.reset(token)


def route_of(scope) -> str:
    """The matched route's template (``/predict``), never the raw path: a metric label must not grow
    with whatever paths clients try."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    return "/static" if scope["path"].startswith("/static") else "unmatched"
