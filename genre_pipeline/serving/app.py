"""The HTTP API and web page around the registered champion (FastAPI on uvicorn).

FastAPI rather than MLflow's scoring server: ``/invocations`` takes only MLflow's dataframe JSON, so it
has no multipart poster upload, no page, no per-genre thresholds in its answer, no way to refuse a bad
poster instead of predicting without it, and it loads one model for its lifetime.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from genre_pipeline.serving import routes
from genre_pipeline.serving.access import AccessLog
from genre_pipeline.serving.auth import Gatekeeper
from genre_pipeline.serving.batching import BatchingOptions
from genre_pipeline.serving.errors import BodyLimit, register_error_handlers
from genre_pipeline.serving.inputs import MAX_BODY_BYTES
from genre_pipeline.serving.metrics import ServingMetrics
from genre_pipeline.serving.reloader import ChampionReloader
from genre_pipeline.serving.service import Service


def create_app(
    reloader: ChampionReloader,
    *,
    batching: BatchingOptions | None = None,
    gatekeeper: Gatekeeper | None = None,
    metrics: ServingMetrics | None = None,
) -> FastAPI:
    """The API around ``reloader``'s champion: the page, health, the model and its metrics, and
    predictions (behind ``gatekeeper``'s API keys and rate limits, and a micro-batcher)."""
    service = Service(
        reloader, batching or BatchingOptions(), gatekeeper or Gatekeeper([]), metrics or ServingMetrics()
    )
    # FastAPIOffline: /docs and /redoc with their assets served from the process (a PyPI package), not a CDN.
    app = FastAPIOffline(
        title="genre_pipeline",
        summary="Movie genres from an overview, a tagline, TMDb metadata and a poster, by the registered champion.",
        lifespan=service.lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # Added last: outermost, so that every answer (a 413 too) gets its id and is counted.
    app.add_middleware(AccessLog, observe=service.metrics.observe_request)
    register_error_handlers(app, service)
    app.include_router(routes.page())
    app.include_router(routes.health(service))
    app.include_router(routes.model_and_metrics(service))
    app.include_router(routes.predictions(service))
    app.include_router(routes.open_inference_protocol(service))
    app.mount("/static", StaticFiles(directory=str(routes.STATIC_DIR)), name="static")
    return app
