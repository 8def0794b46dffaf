"""The one error base every adapter raises: what the lifecycle, the jobs and the retry policy
need to know about a failed outside call, whoever the provider is::

    ProviderError              provider, transient, retry_after, outcome_unknown
    ├── TransientError         retrying may help: timeouts, dropped connections, 5xx, 429
    │                          (the retry policy retries exactly these)
    └── PermanentError         retrying will not help: 4xx, bad input, a reply we cannot use

Each adapter keeps its own tree under these (``VultrNotFound``, ``CloudflareRateLimited``,
``SSHHostKeyMismatch``, ``MailPermanent`` …) so callers can still ask precise questions,
and raises with the library's original error chained (``raise … from exc``) for the
traceback. Messages never carry credentials: adapters build them from status codes and
their own words, never from request headers.

- ``transient``: the same call may succeed later.
- ``retry_after``: seconds the provider asked us to wait (HTTP Retry-After), if it said.
- ``outcome_unknown``: the request may have been applied before the failure (a timeout, a
  lost reply, a 5xx); ``False`` when it certainly was not (429, a refused connection, 4xx).
  A create whose outcome is unknown is resolved by looking, never by posting again.
"""

from __future__ import annotations

from typing import ClassVar


class ProviderError(Exception):
    """Base of every error an adapter raises."""

    provider: ClassVar[str] = "provider"
    transient: ClassVar[bool] = False
    outcome_unknown: bool = False
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None,
                 outcome_unknown: bool | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after
        if outcome_unknown is not None:
            self.outcome_unknown = outcome_unknown


class TransientError(ProviderError):
    """Retrying may help. By default the request may have been applied (``outcome_unknown``)."""

    transient = True
    outcome_unknown = True


class PermanentError(ProviderError):
    """Retrying will not help: a human or a different request is needed."""
