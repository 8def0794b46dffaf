"""Per-app state and the request dependencies: who is calling, scoped to their servers.

Authentication is ``Authorization: Bearer <token>`` (see :mod:`dashboard_api.tokens`); each
authenticated customer is also rate limited on their own, on top of the per-address limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from dashboard_api.errors import ApiError
from dashboard_api.guards import SlidingWindowLimiter, retry_after
from dashboard_api.metrics import ApiMetrics
from dashboard_api.tokens import Customer, TokenError, verify_token
from provisioner.settings.schema import Settings
from provisioner.wiring import App

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

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A pooled connection for one read; its transaction ends (rolled back) on the way out,
        so a long-lived page poller never pins an old snapshot."""
        with self.app.engine.connect() as conn:
            yield conn


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
