"""Prometheus metrics of one serving process, exposed at ``/metrics``: requests by route and status,
latency, model-call batch sizes, queue depth, shed and rate-limited requests, predicted genres, and
the served champion. Each process has its own registry: run several behind a proxy and scrape each."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()  # a *_created series per label set doubles the output for nothing

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "genre_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "genre_http_request_duration_seconds", "Time to answer", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "genre_model_batch_rows", "Movies per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "genre_model_batch_duration_seconds", "Time per model call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("genre_queue_depth", "Requests waiting for the model", registry=r)
        self.shed = Counter(
            "genre_shed_requests", "Requests refused with 503 (queue full or deadline)", ["reason"], registry=r
        )
        self.rate_limited = Counter("genre_rate_limited_requests", "Requests refused with 429", registry=r)
        self.predicted = Counter("genre_predicted_genres", "Genres decided in answers", ["genre"], registry=r)
        self.model = Gauge(
            "genre_model_info",
            "The served champion (1) and versions served before (0)",
            ["version", "model"],
            registry=r,
        )
        self.ready = Gauge("genre_model_ready", "1 while a champion is loaded and answering", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def count_genres(self, genres: list[str]) -> None:
        for genre in genres:
            self.predicted.labels(genre).inc()

    def serving(self, version: str, model: str) -> None:
        for sample in self.model.collect()[0].samples:
            self.model.labels(sample.labels["version"], sample.labels["model"]).set(0)
        self.model.labels(version, model).set(1)
        self.ready.set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
