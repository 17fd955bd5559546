"""Prometheus metrics for /metrics: request counts and latencies per route, training runs by status."""

from __future__ import annotations

import hmac
import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.tables import TrainingRun


class _RunsCollector:
    """Training runs by status, read from the database at scrape time (the database is the truth)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self):
        gauge = GaugeMetricFamily("sage_training_runs", "Training runs by status", labels=["status"])
        try:
            with self.app.state.session_factory() as session:
                rows = session.execute(
                    select(TrainingRun.status, func.count()).group_by(TrainingRun.status)
                ).all()
        except Exception:  # noqa: BLE001 - an unreachable database must not break the scrape
            rows = []
        for status, count in rows:
            gauge.add_metric([status], count)
        yield gauge
        from app.services.objects import read_report

        report = read_report(self.app.state.settings.resolved_data_dir)
        if report is not None:
            sweep = GaugeMetricFamily(
                "sage_orphan_sweep_objects",
                "Stored objects in the last orphan sweep, by outcome",
                labels=["outcome"],
            )
            for outcome in ("scanned", "orphans", "removed", "kept", "temp_removed"):
                sweep.add_metric([outcome], getattr(report, outcome))
            yield sweep
            yield GaugeMetricFamily(
                "sage_orphan_sweep_last_run_timestamp_seconds",
                "When the last orphan sweep finished",
                value=report.finished_at,
            )


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_labels(request: Request) -> tuple[str, str]:
    """(method, route) labels with bounded cardinality: any other method is `OTHER`, and a path
    no route matched is `unmatched`, so random methods and URLs cannot grow the label set."""
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    route = request.scope.get("route")
    return method, getattr(route, "path", None) or "unmatched"


def install_metrics(app: FastAPI) -> None:
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    requests = Counter(
        "sage_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "sage_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    registry.register(_RunsCollector(app))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            # Label by the route template, not the raw path, so ids do not explode cardinality.
            method, name = request_labels(request)
            requests.labels(method, name, str(status)).inc()
            latency.labels(method, name).observe(time.perf_counter() - start)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus text format. With `SAGE_METRICS_TOKEN` set, only for `Authorization: Bearer <it>`."""
        token = request.app.state.settings.metrics_token
        if token:
            sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(sent.encode(), token.encode()):
                return Response(
                    '{"detail":"send the metrics token as Authorization: Bearer <SAGE_METRICS_TOKEN>"}',
                    status_code=401,
                    media_type="application/json",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
