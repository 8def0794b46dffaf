"""The worker's Prometheus metrics, where the money is spent (the API has its own, in
:mod:`dashboard_api.metrics`).

Counted as they happen (this process):

* ``provisioner_worker_ticks_total{outcome}`` and ``provisioner_worker_tick_duration_seconds``:
  planning passes (``ok``, ``storefront_error``, ``lost_leadership``, ``error``);
* ``provisioner_worker_steps_total{action,step,outcome}`` and
  ``provisioner_worker_step_duration_seconds{action,step}``: lifecycle steps (``ok``, ``wait``,
  ``retry``, ``needs_human``, ``error``);
* ``provisioner_provider_calls_total{provider,outcome}`` and
  ``provisioner_provider_call_duration_seconds{provider}``: Vultr, Cloudflare, SSH and SMTP
  calls (``ok``; ``failed``: worth retrying; ``refused``: a 4xx, a host-key mismatch…);
* ``provisioner_worker_job_runs_total{job,outcome}``: clock jobs (``ok``, ``incomplete``, ``error``);
* ``provisioner_worker_leader`` (1 on the leader) and ``provisioner_worker_busy_threads``.

Read from the database at scrape time (the fleet's state, the same for every worker):

* ``provisioner_servers{status,action}``, ``provisioner_servers_needing_human``,
  ``provisioner_destroys_held{code}`` (the planner's holds: no evidence, the breaker…),
  ``provisioner_outbox_messages{status}``.

Served on ``worker.metrics_listen``:``worker.metrics_port`` (0: off), loopback by default:
put it behind your scraper's network, not the internet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import DestroyHold, OutboxMessage, Server, Status

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class FleetCollector(Collector):
    """The fleet's state as the database has it, at scrape time (cheap grouped counts)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        servers = GaugeMetricFamily("provisioner_servers", "Server rows by status and action in progress",
                                    labels=["status", "action"])
        human = GaugeMetricFamily("provisioner_servers_needing_human", "Live servers waiting for a human")
        held = GaugeMetricFamily("provisioner_destroys_held", "Destroys the planner holds back, by reason",
                                 labels=["code"])
        outbox = GaugeMetricFamily("provisioner_outbox_messages", "Notifications by status", labels=["status"])
        try:
            with self.sessions() as s:
                for status, action, n in s.execute(select(Server.status, Server.action, func.count())
                                                    .group_by(Server.status, Server.action)):
                    servers.add_metric([status, action or ""], n)
                human.add_metric([], s.scalar(select(func.count()).select_from(Server).where(
                    Server.needs_human.is_(True), Server.status != Status.DESTROYED.value)) or 0)
                for code, n in s.execute(select(DestroyHold.reason_code, func.count())
                                         .where(DestroyHold.approved_at.is_(None))
                                         .group_by(DestroyHold.reason_code)):
                    held.add_metric([code], n)
                for status, n in s.execute(select(OutboxMessage.status, func.count())
                                           .group_by(OutboxMessage.status)):
                    outbox.add_metric([status], n)
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the fleet's state: %s", type(exc).__name__)
            return
        yield from (servers, human, held, outbox)


class WorkerMetrics:
    def __init__(self, sessions: sessionmaker[Session], *, busy: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ticks = Counter("provisioner_worker_ticks", "Planning passes by outcome", ["outcome"], registry=r)
        self.tick_seconds = Histogram("provisioner_worker_tick_duration_seconds", "Time one planning pass took",
                                      buckets=TICK_BUCKETS, registry=r)
        self.steps = Counter("provisioner_worker_steps", "Lifecycle steps by action, step and outcome",
                             ["action", "step", "outcome"], registry=r)
        self.step_seconds = Histogram("provisioner_worker_step_duration_seconds", "Time one step run took",
                                      ["action", "step"], buckets=STEP_BUCKETS, registry=r)
        self.calls = Counter("provisioner_provider_calls", "Calls to Vultr, Cloudflare, SSH and SMTP by outcome",
                             ["provider", "outcome"], registry=r)
        self.call_seconds = Histogram("provisioner_provider_call_duration_seconds", "Time one provider call took",
                                      ["provider"], buckets=CALL_BUCKETS, registry=r)
        self.jobs = Counter("provisioner_worker_job_runs", "Clock job runs by outcome", ["job", "outcome"],
                            registry=r)
        self.leader = Gauge("provisioner_worker_leader", "1 while this worker leads (clock and planner)",
                            registry=r)
        busy_gauge = Gauge("provisioner_worker_busy_threads", "Driver threads working on a server now", registry=r)
        busy_gauge.set_function(lambda: float(busy()))
        r.register(FleetCollector(sessions))
        self._lock = threading.Lock()

    # --- what the worker, the lifecycle and the adapters report -----------------------------------

    def step(self, action: str, step: str, outcome: str, seconds: float) -> None:
        self.steps.labels(action, step, outcome).inc()
        self.step_seconds.labels(action, step).observe(seconds)

    def call(self, provider: str, outcome: str, seconds: float) -> None:
        self.calls.labels(provider, outcome).inc()
        self.call_seconds.labels(provider).observe(seconds)

    def tick(self, outcome: str, seconds: float) -> None:
        self.ticks.labels(outcome).inc()
        self.tick_seconds.observe(seconds)

    def job(self, name: str, outcome: str) -> None:
        self.jobs.labels(name, outcome).inc()

    def serve(self, host: str, port: int) -> Any:
        """Start the HTTP endpoint (a daemon thread); returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("worker metrics on http://%s:%s/metrics", host, server.server_port)
        return server
