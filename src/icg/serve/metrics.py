"""Prometheus metrics of one app, in their own registry (no process-wide global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """Requests by route and status, latency, queue depth, batch sizes, cache hits, 429s.

    Args:
        queue_depth: reads the number of requests waiting for the pipeline.
        cache_counts: reads ``{cache name: (hits, misses)}`` at scrape time.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        queue_depth: Callable[[], float],
        cache_counts: Callable[[], dict[str, tuple[int, int]]],
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "icg_requests", "HTTP requests by route and status", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "icg_request_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "icg_rejected", "Requests answered 429 because the queue was full",
            registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "icg_batch_rows", "Rows (requests x candidates) per pipeline call",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "icg_batch_requests", "Requests per pipeline call",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        Gauge(
            "icg_queue_depth", "Requests waiting for the pipeline", registry=self.registry
        ).set_function(queue_depth)
        self._cache_counts = cache_counts
        self._hits = Gauge("icg_cache_hits", "Cache hits so far", ["cache"], registry=self.registry)
        self._misses = Gauge(
            "icg_cache_misses", "Cache misses so far", ["cache"], registry=self.registry
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, requests: int, rows: int) -> None:
        """Record one pipeline call's size."""
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        for name, (hits, misses) in self._cache_counts().items():
            self._hits.labels(cache=name).set(hits)
            self._misses.labels(cache=name).set(misses)
        return generate_latest(self.registry)
