"""What the routes share: the served champion (through the reloader), the micro-batcher in front of it,
API keys and rate limits, and the metrics; and the answers several routes give (readiness, the model's
summary, a prediction as JSON)."""

from __future__ import annotations

import contextlib

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from genre_pipeline.champion import registry
from genre_pipeline.serving import inputs
from genre_pipeline.serving.auth import Gatekeeper
from genre_pipeline.serving.batching import BatchingOptions, MicroBatcher
from genre_pipeline.serving.inputs import InputError
from genre_pipeline.serving.metrics import ServingMetrics
from genre_pipeline.serving.reloader import ChampionReloader, ServedModel


class NotReady(Exception):
    """No champion is loaded yet (the server has just started, or the registry has none)."""


class Service:
    """Prediction requests go through a MicroBatcher (one model call for concurrent requests, a bounded
    queue); ``gatekeeper`` checks API keys and rate limits on them (none: open, unlimited)."""

    def __init__(
        self, reloader: ChampionReloader, batching: BatchingOptions, gatekeeper: Gatekeeper, metrics: ServingMetrics
    ):
        self.reloader, self.gatekeeper, self.metrics = reloader, gatekeeper, metrics
        self.batcher = MicroBatcher(
            self._predict_current, batching, observe=metrics.observe_batch, on_queue=metrics.queue_depth.set
        )
        reloader.on_load = lambda served: metrics.serving(served.version, served.predictor.info["model"])

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.reloader.start()
        self.batcher.start()
        yield
        await self.batcher.stop()
        self.reloader.stop()

    def not_ready_reason(self) -> str:
        return self.reloader.last_error or "the champion is loading"

    def current_model(self) -> ServedModel:
        served = self.reloader.current
        if served is None:
            raise NotReady()
        return served

    def _predict_current(self, rows: list[dict]) -> tuple[ServedModel, list]:
        served = self.current_model()  # kept for the whole call, whatever a reload does meanwhile
        return served, served.predict_rows(rows)

    async def admitted(self, request: Request) -> None:
        """A route dependency: the caller's key and rate limit (HTTPException 401/403/429 otherwise)."""
        caller, refusal = self.gatekeeper.check(request.headers, request.client.host if request.client else "-")
        request.state.caller = caller
        if refusal is not None:
            if refusal.status == 429:
                self.metrics.rate_limited.inc()
            raise HTTPException(refusal.status, refusal.message, headers=refusal.headers)

    async def predict_rows(self, rows: list[dict]) -> tuple[ServedModel, list]:
        self.current_model()  # refuse at once rather than queue while nothing can answer
        try:
            served, predictions = await self.batcher.submit(rows)
        except ValueError as error:  # the model's own input checks
            raise InputError(str(error)) from None
        for prediction in predictions:
            self.metrics.count_genres(prediction.genres)
        return served, predictions

    def readiness(self) -> JSONResponse:
        served = self.reloader.current
        if served is None:
            return JSONResponse(
                {"status": "not ready", "ready": False, "reason": self.not_ready_reason()}, status_code=503
            )
        return JSONResponse(
            {"status": "ok", "ready": True, "version": served.version, "reload_error": self.reloader.last_error}
        )


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
