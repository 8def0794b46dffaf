"""Prometheus metrics of the API: requests by route and status, latency, servers by status.

Each app has its own registry (tests build many apps in one process). Routes are labelled by
their template (``/api/servers/{name}/rebuild``), never by the raw path, so a scanner
cannot blow up the label space; unmatched paths share the label ``(unmatched)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner.models import Server

log = logging.getLogger(__name__)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServersByStatus(Collector):
    def __init__(self, sessions: Callable[[], sessionmaker[Session]]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("provisioner_servers", "Servers by status", labels=["status"])
        try:
            with self.sessions()() as s:
                rows = s.execute(select(Server.status, func.count()).group_by(Server.status)).all()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot count servers: %s", type(exc).__name__)
            return
        for status, count in rows:
            family.add_metric([status], count)
        yield family


class ApiMetrics:
    def __init__(self, sessions: Callable[[], sessionmaker[Session]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("provisioner_api_requests", "API requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("provisioner_api_request_duration_seconds", "Time to answer, by route",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(ServersByStatus(sessions))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # The children per label set, looked up once: labels() validates and locks on every call.
        # Bounded like the label space itself (route templates x methods x statuses).
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or _static_label(scope["path"])
            self.metrics.observe(label, scope["method"], status, time.perf_counter() - started)


def _static_label(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    return path if path in ("/", "/metrics", "/healthz", "/docs", "/openapi.json") else "(unmatched)"
