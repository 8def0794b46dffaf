"""Per-app state and the request dependencies: who is calling, scoped to their servers.

Authentication is ``Authorization: Bearer <token>`` (see :mod:`dashboard_api.tokens`); each
authenticated customer is also rate limited on their own, on top of the per-address limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

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

    def read(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on the read connection (see :class:`Reader`)."""
        return self.reader.run(fn)

    @functools.cached_property
    def reader(self) -> Reader:
        return Reader(self.app.engine)


class Reader:
    """The customer's reads, on one connection kept for them, in autocommit mode.

    The read routes run on the event loop's one thread, one after the other, so one
    connection serves them all: no pool checkout (whose liveness ping is a round trip on
    MariaDB) and no transaction to end after each read (another round trip); every SELECT
    sees what is committed when it starts. A connection that turns out dead (the database
    restarted) is dropped and the read tried once more on a new one, as the pool's ping
    would have done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def run(self, fn: Callable[[Connection], T]) -> T:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return fn(conn)
            except Exception as exc:
                if not self._dead(exc) or attempt == 2:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _connection(self) -> Connection:
        if self._conn is not None and (self._conn.invalidated or self._conn.closed):
            self.close()
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

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
    wait = st.per_customer.hit("customer:" + who.email.lower())
    if wait:
        raise ApiError(429, "rate_limited", "Too many requests; please slow down.", {"Retry-After": retry_after(wait)})
    return who
