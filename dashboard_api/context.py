"""Per-app state and the request dependencies: who is calling, scoped to their servers.

Authentication is ``Authorization: Bearer <token>`` (see :mod:`dashboard_api.tokens`); each
authenticated customer is also rate limited on their own, on top of the per-address limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.routing import request_response

from dashboard_api.errors import ApiError
from dashboard_api.guards import SlidingWindowLimiter, retry_after
from dashboard_api.listing import ServerListing
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

    @functools.cached_property
    def listing(self) -> ServerListing:
        return ServerListing(max_bytes=self.settings.api.listing_memory_mb * 2**20)


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
    return authenticate(credentials.credentials if credentials is not None else None, st)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header, exactly as ``HTTPBearer(auto_error=False)``
    reads it (scheme ``Bearer`` in any case, then everything after the first space), else None."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def authenticate(token: str | None, st: ApiState) -> Customer:
    """The caller behind ``token``, counted against their own rate limit; else 401 or 429."""
    unauthorized = {"WWW-Authenticate": 'Bearer realm="provisioner"'}
    if token is None:
        raise ApiError(401, "unauthorized", "Sign in through the store to see your servers.", unauthorized)
    try:
        who = verify_token(token, st.secret, st.settings.api.jwt_audience, st.clock())
    except TokenError as exc:
        raise ApiError(401, exc.code, str(exc),
                       {"WWW-Authenticate": 'Bearer realm="provisioner", error="invalid_token"'}) from None
    wait = st.per_customer.hit("customer:" + who.user_id)
    if wait:
        raise ApiError(429, "rate_limited", "Too many requests; please slow down.", {"Retry-After": retry_after(wait)})
    return who


class CustomerRead(APIRoute):
    """A customer's read whose endpoint is ``async def f(who: Customer = Depends(customer),
    st: ApiState = Depends(state)) -> Response`` and takes nothing else.

    FastAPI documents it as declared (OpenAPI: the bearer scheme, the response model), but a
    request does not go through FastAPI's general dependency solving, which cost a fifth of
    ``GET /api/servers``: the two dependencies are resolved here by the same functions
    (:func:`bearer_token` as ``HTTPBearer`` reads the header, then :func:`authenticate`).
    A signature with anything more (a path or query parameter, another dependency, a body) is
    refused when the route is built, so nothing declared can be silently skipped."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        given = {dep.name: dep.call for dep in d.dependencies}
        if (given != {"who": customer, "st": state} or len(d.dependencies) != 2 or d.path_params or d.query_params
                or d.header_params or d.cookie_params or d.body_params or not inspect.iscoroutinefunction(endpoint)):
            raise TypeError(f"{path}: a CustomerRead endpoint is async and takes exactly who=Depends(customer) "
                            "and st=Depends(state)")
        read: Callable[..., Awaitable[Response]] = endpoint

        async def handle(request: Request) -> Response:
            st: ApiState = request.app.state.dashboard
            who = authenticate(bearer_token(request.headers.get("authorization")), st)
            response = await read(who=who, st=st)
            assert isinstance(response, Response), f"{path}: a CustomerRead endpoint returns a Response"
            return response

        self.app = request_response(handle)
