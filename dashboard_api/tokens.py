"""Dashboard login tokens: HS256 JWTs minted by the storefront (or the demo), verified here.

Claims: ``sub`` (the storefront account, which scopes every request: the WordPress user id
with EDD, the Stripe customer id with Stripe), ``email`` (for display only: an address is not
an identity), ``aud`` (``api.jwt_audience``), ``iat`` and ``exp``. A token may live at
most :data:`MAX_TTL_SECONDS`: one minted for longer is refused even before it expires, so a
leaked long-lived token is useless. The WordPress plugin mints 15-minute tokens.

The secret is ``api.jwt_secret``; nothing here ever logs or echoes a token.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt

from provisioner.settings import ConfigError
from provisioner.settings.schema import Settings

ALGORITHM = "HS256"
MAX_TTL_SECONDS = 3600
LEEWAY_SECONDS = 30          # clock skew between the storefront and this host
MAX_TOKEN_CHARS = 4096
_EMAIL = re.compile(r"[^@\s]{1,128}@[^@\s]{1,190}")


class TokenError(Exception):
    """A token that does not prove who the caller is. The message is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Customer:
    email: str
    user_id: str

    def __repr__(self) -> str:
        return f"Customer({self.email!r})"


def require_secret(settings: Settings) -> str:
    secret = settings.api.jwt_secret
    if not secret:
        raise ConfigError("api.jwt_secret: empty; the dashboard API needs the secret the storefront signs tokens "
                          "with (set api.jwt_secret_file or PROVISIONER_API_JWT_SECRET)")
    return secret


def mint_token(settings: Settings, email: str, user_id: int | str, ttl_seconds: int = 3600,
               *, now: dt.datetime | None = None) -> str:
    """A dashboard token for ``email``, as the WordPress plugin makes them (demo and tests)."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
    issued = int((now or dt.datetime.now(dt.UTC)).timestamp())
    claims = {"email": email, "sub": str(user_id), "aud": settings.api.jwt_audience,
              "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, require_secret(settings), algorithm=ALGORITHM)


@functools.lru_cache(maxsize=4096)
def _decode(token: str, secret: str, audience: str) -> Mapping[str, Any]:
    """Signature, algorithm, audience and the required claims: what depends only on the token,
    the secret and the audience, so a verdict is remembered (a page polls with one token for
    its whole life; failures are not cached). The times are checked on every call."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=audience, leeway=LEEWAY_SECONDS,
            # `sub` is checked below: WordPress user ids arrive as numbers from some minters.
            options={"require": ["exp", "iat", "sub", "aud", "email"], "verify_sub": False,
                     "verify_exp": False, "verify_iat": False})
    except jwt.InvalidAudienceError:
        raise TokenError("invalid_token", "The sign-in token is for another application.") from None
    except jwt.PyJWTError:
        raise TokenError("invalid_token", "The sign-in token is not valid.") from None
    return MappingProxyType(claims)


def verify_token(token: str, secret: str, audience: str, now: dt.datetime) -> Customer:
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("invalid_token", "The sign-in token is missing or malformed.")
    claims = _decode(token, secret, audience)
    iat, exp = claims["iat"], claims["exp"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        raise TokenError("invalid_token", "The sign-in token has malformed times.")
    ts = now.timestamp()
    if exp - iat > MAX_TTL_SECONDS:
        raise TokenError("invalid_token", "The sign-in token lives longer than one hour; it is refused.")
    if iat > ts + LEEWAY_SECONDS:
        raise TokenError("invalid_token", "The sign-in token was issued in the future; check the clocks.")
    if exp <= ts - LEEWAY_SECONDS:
        raise TokenError("token_expired", "Your session has expired. Reload the page from the store.")
    email, sub = claims["email"], claims["sub"]
    if not isinstance(email, str) or not _EMAIL.fullmatch(email):
        raise TokenError("invalid_token", "The sign-in token has no valid email.")
    if isinstance(sub, bool) or not isinstance(sub, (str, int)) or not str(sub):
        raise TokenError("invalid_token", "The sign-in token has no valid user id.")
    return Customer(email=email, user_id=str(sub))
