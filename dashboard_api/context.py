"""Per-app state and the request dependencies: who is calling, scoped to their servers.

Authentication is ``Authorization: Bearer <token>`` (see :mod:`dashboard_api.tokens`); each
authenticated customer is also rate limited on their own, on top of the per-address limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from dashboard_api.errors import ApiError
from dashboard_api.guards import SlidingWindowLimiter, retry_after
from dashboard_api.metrics import ApiMetrics
from dashboard_api.tokens import Customer, TokenError, verify_token
from provisioner.settings.schema import Settings
from provisioner.wiring import App

T = TypeVar("T")

LANGUAGES = ("en", "de", "fr")
REFRESH_SECONDS = 15


@dataclass
class ApiState:
    app: App
    clock: Callable[[], dt.datetime]
    secret: str
    per_customer: SlidingWindowLimiter
    per_ip: SlidingWindowLimiter
    metrics: ApiMetrics

    @property
    def settings(self) -> Settings:
        return self.app.settings

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on a read connection (see :class:`Reader`)."""
        return await self.reader.run(fn)

    @functools.cached_property
    def reader(self) -> Reader:
        return Reader(self.app.engine)


class Reader:
    """The customer's reads, on connections kept for them in autocommit mode.

    No pool checkout per read (its liveness ping is a round trip on MariaDB) and no
    transaction to end after it (another one): every SELECT sees what is committed when it
    starts. SQLite answers in-process in microseconds, so its reads run right on the event
    loop, on one connection (no thread-pool hop). A networked database's reads go to a
    thread, at most ``slots`` at a time, each on a connection of its own from a small stack
    of idle ones: one slow answer never stalls the loop, and a few are waited for at once.
    A connection that turns out dead (the database restarted) is dropped and the read tried
    once more on a new one, as the pool's ping would have done."""

    def __init__(self, engine: Engine, slots: int = 8) -> None:
        self._engine = engine
        self._inline = engine.dialect.name == "sqlite"
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(slots)   # connections held <= the engine pool's size

    async def run(self, fn: Callable[[Connection], T]) -> T:
        if self._inline:
            return self._run(fn)
        return await run_in_threadpool(self._run, fn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def _run(self, fn: Callable[[Connection], T]) -> T:
        with self._slots:
            for attempt in (1, 2):
                conn = self._take()
                try:
                    result = fn(conn)
                except Exception as exc:
                    self._discard(conn)
                    if not self._dead(exc) or attempt == 2:
                        raise
                    continue
                with self._lock:
                    self._idle.append(conn)
                return result
        raise AssertionError("unreachable")

    def _take(self) -> Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.invalidated or conn.closed):
                    return conn
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    @staticmethod
    def _discard(conn: Connection) -> None:
        with contextlib.suppress(Exception):
            conn.invalidate()
            conn.close()

    def _dead(self, exc: Exception) -> bool:
        if isinstance(exc, DBAPIError):
            return bool(exc.connection_invalidated)
        dbapi = self._engine.dialect.loaded_dbapi
        return isinstance(exc, dbapi.Error) and self._engine.dialect.is_disconnect(exc, None, None)


# Both dependencies are async on purpose: they never block (no I/O), and a sync dependency
# would cost a thread-pool hop on every request.
async def state(request: Request) -> ApiState:
    st: ApiState = request.app.state.dashboard
    return st


_bearer = HTTPBearer(auto_error=False, description="the dashboard token the storefront minted (HS256 JWT)")


async def customer(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
             st: ApiState = Depends(state)) -> Customer:  # noqa: B008
    unauthorized = {"WWW-Authenticate": 'Bearer realm="provisioner"'}
    if credentials is None:
        raise ApiError(401, "unauthorized", "Sign in through the store to see your servers.", unauthorized)
    try:
        who = verify_token(credentials.credentials, st.secret, st.settings.api.jwt_audience, st.clock())
    except TokenError as exc:
        raise ApiError(401, exc.code, str(exc),
                       {"WWW-Authenticate": 'Bearer realm="provisioner", error="invalid_token"'}) from None
    wait = st.per_customer.hit("customer:" + who.user_id)
    if wait:
        raise ApiError(429, "rate_limited", "Too many requests; please slow down.", {"Retry-After": retry_after(wait)})
    return who
