"""The runtime errors the CLI reports as one line (exit 1) rather than as an internal error."""

from __future__ import annotations

from provisioner.db import DatabaseUnavailable
from provisioner.secrets import SecretKeyError, UndecryptableSecret
from provisioner.subscriptions import StorefrontUnavailable

RUNTIME_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    StorefrontUnavailable,
    SecretKeyError,
    UndecryptableSecret,
)
