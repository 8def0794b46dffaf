"""What every route that changes a customer's server shares: find the caller's own row, turn
the customer service's refusals into the API's error bodies, and commit with the row's fence.

A server that is not the caller's answers 404 exactly like one that does not exist, so a guess
cannot tell the two apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dashboard_api import queries
from dashboard_api.context import ApiState
from dashboard_api.errors import ApiError
from dashboard_api.guards import retry_after
from dashboard_api.tokens import Customer
from provisioner import customer as service
from provisioner.secrets import UndecryptableSecret

log = logging.getLogger(__name__)


def owned(s: Session, st: ApiState, who: Customer, name: str) -> queries.Owned:
    found = queries.customer_server(s, who.user_id, name, st.settings.cloudflare.domain)
    if found is None:
        raise ApiError(404, "server_not_found", f"You have no server called {name}.")
    return found


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """The customer service's verdicts as the API's error bodies."""
    try:
        yield
    except service.Refused as exc:
        headers = {"Retry-After": retry_after(exc.retry_after)} if exc.retry_after else None
        raise ApiError(exc.status, exc.code, exc.message, headers) from None


def commit(s: Session) -> None:
    try:
        s.commit()
    except StaleDataError:
        s.rollback()
        raise ApiError(409, "conflict", "The server changed while we were saving; reload and try again.") from None


@contextlib.contextmanager
def readable() -> Iterator[None]:
    """A sealed column the configured keys cannot open: 503, and the operator is told in the log."""
    try:
        yield
    except UndecryptableSecret:
        log.error("a server's secrets cannot be decrypted with the configured keys")
        raise ApiError(503, "unavailable", "Your server's keys cannot be read right now. Our team has been "
                       "alerted; please try again later.") from None
