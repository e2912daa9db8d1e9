"""Prometheus metrics of the API process (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.models import JOB_STATES

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "matdesign_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "matdesign_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_SUBMITTED = Counter(
    "matdesign_jobs_submitted_total",
    "Jobs accepted by this API process, by method.",
    ["method"],
    registry=REGISTRY,
)
JOBS = Gauge(
    "matdesign_jobs",
    "Jobs in the database by status (read at scrape time).",
    ["status"],
    registry=REGISTRY,
)
ENQUEUE_FAILURES = Counter(
    "matdesign_enqueue_failures_total",
    "Jobs committed but not handed to the broker (the sweeper retries them).",
    registry=REGISTRY,
)


def render(job_counts: dict[str, int]) -> bytes:
    for status in JOB_STATES:
        JOBS.labels(status).set(job_counts.get(status, 0))
    return generate_latest(REGISTRY)
