"""Raw ASGI guards around the app: body size, CORS, per-IP rate limit and security headers.

They run before routing and parsing, so an oversized or abusive request costs almost
nothing. All of them answer in the one JSON error shape (see :mod:`dashboard_api.errors`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard_api.errors import error_bytes

Headers = list[tuple[bytes, bytes]]


class SlidingWindowLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds (exact sliding log).

    Thread-safe: the sync routes run in a thread pool. Idle keys are dropped as they are met,
    and the whole table is swept when it grows past ``max_keys``, so memory stays bounded.
    """

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.limit, self.window, self.clock, self.max_keys = limit, window, clock, max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Record a hit. Returns 0 when allowed, else the seconds until one is allowed again."""
        now = self.clock()
        with self._lock:
            log = self._hits.get(key)
            if log is None:
                if len(self._hits) >= self.max_keys:
                    self._sweep(now)
                log = self._hits[key] = deque()
            while log and log[0] <= now - self.window:
                log.popleft()
            if len(log) >= self.limit:
                return max(log[0] + self.window - now, 0.001)
            log.append(now)
            return 0.0

    def _sweep(self, now: float) -> None:
        for key in [k for k, log in self._hits.items() if not log or log[-1] <= now - self.window]:
            del self._hits[key]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


async def send_error(send: Send, status: int, code: str, message: str, extra: Headers | None = None) -> None:
    body = error_bytes(code, message)
    headers: Headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed (chunked) body passes the limit; FastAPI lets
    HTTPExceptions through its body parsing, and the error handler turns it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


class BodyLimit:
    """``max_bytes`` for every body, checked before parsing: the declared Content-Length at once,
    a chunked body as it streams in. Paths under ``exempt`` enforce their own limit (the Stripe
    webhook takes events up to 1 MB)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ("/webhooks/",)) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await send_error(send, 413, "body_too_large",
                                     f"The request body is larger than {self.max_bytes} bytes.")
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


class Cors:
    """CORS for exactly one origin (``api.cors_origin``); no wildcard, no credentials.

    Other origins get no CORS headers, and their preflights fall through to the router,
    which answers 405 in the JSON error shape."""

    def __init__(self, app: ASGIApp, origin: str) -> None:
        self.app, self.origin = app, origin.rstrip("/").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        if scope["type"] != "http" or not self.origin or origin != self.origin:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", self.origin), (b"vary", b"Origin"),
                (b"access-control-allow-methods", b"GET, POST, PUT, DELETE"),
                (b"access-control-allow-headers", b"Authorization, Content-Type"),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", self.origin),
                                      (b"vary", b"Origin"),
                                      (b"access-control-expose-headers", b"Retry-After, Content-Disposition")]
            await send(message)

        await self.app(scope, receive, with_cors)


class IpRateLimit:
    """``requests_per_minute`` per client address on /api/ (before authentication)."""

    def __init__(self, app: ASGIApp, limiter: SlidingWindowLimiter, prefixes: Iterable[str] = ("/api/",)) -> None:
        self.app, self.limiter, self.prefixes = app, limiter, tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes) and scope["method"] != "OPTIONS":
            wait = self.limiter.hit("ip:" + client_ip(scope))
            if wait:
                await send_error(send, 429, "rate_limited", "Too many requests from your address; slow down.",
                                 [(b"retry-after", retry_after(wait).encode())])
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Headers on every response; the page (everything outside /api, /docs and /metrics) also
    gets a CSP without inline scripts whose frame-ancestors name the storefront."""

    def __init__(self, app: ASGIApp, frame_ancestors: Iterable[str]) -> None:
        self.app = app
        ancestors = " ".join(["'self'", *sorted(set(frame_ancestors))])
        self.csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                    f"frame-ancestors {ancestors}").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        page = not path.startswith(("/api/", "/docs", "/openapi.json", "/metrics", "/healthz", "/webhooks/"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: Headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers.append((b"content-security-policy", self.csp))
                    headers.append((b"cross-origin-opener-policy", b"same-origin"))
                if not any(k == b"cache-control" for k, _ in headers) and path.startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, or None when it has none."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"
