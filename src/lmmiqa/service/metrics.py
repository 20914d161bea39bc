"""Prometheus metrics of the scoring service."""

from __future__ import annotations

from lmmiqa.errors import require


class ServiceMetrics:
    """Prometheus metrics of one service (own registry, so several apps can live in one process).

    Exposed series: ``lmmiqa_requests_total{endpoint,status}``, ``lmmiqa_request_latency_seconds{endpoint}``,
    ``lmmiqa_batch_size``, ``lmmiqa_batch_seconds``, ``lmmiqa_images_total{method,outcome}``,
    ``lmmiqa_failures_total{reason}``, ``lmmiqa_queue_depth``.
    """

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve", "the /metrics endpoint")
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("lmmiqa_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram(
            "lmmiqa_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "lmmiqa_batch_size", "images per backend batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_seconds = prom.Histogram(
            "lmmiqa_batch_seconds",
            "time to score one backend batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.images = prom.Counter("lmmiqa_images", "images scored", ["method", "outcome"], registry=r)
        self.failures = prom.Counter("lmmiqa_failures", "failed requests and items by reason", ["reason"], registry=r)
        self.queue_depth = prom.Gauge("lmmiqa_queue_depth", "images waiting for a batch", registry=r)

    def render(self) -> tuple[bytes, str]:
        """(exposition text, content type) for ``GET /metrics``."""
        prom = require("prometheus_client", "serve", "the /metrics endpoint")
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
