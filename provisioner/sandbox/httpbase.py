"""SIMULATOR ONLY: stdlib HTTP plumbing shared by the sandbox's simulated APIs.

A :class:`Service` owns a :class:`Router` of ``(method, template) -> handler`` routes,
its own error body format and authentication.  :class:`SimServer` serves one service
on a loopback address with a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, like the real
APIs), applies injected faults around each handler and records every call.

Replies are JSON with the header exactly ``Content-Type: application/json`` (no charset:
vultr-python parses nothing else, REFERENCE §1.10) unless a fault overrides it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from provisioner.sandbox.faults import Decision, FaultInjector

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = 1 << 20


class HttpError(Exception):
    """Raised by handlers; the service turns it into its own error body."""

    def __init__(self, status: int, message: str, code: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, "Invalid JSON body.", 9207) from None
        if not isinstance(data, dict):
            raise HttpError(400, "JSON body must be an object.", 9207)
        return data


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Filled by the handler for the call log: what the call was about.
    subject: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.routes.append(Route(method, template, re.compile(f"^{regex}/?$"), handler))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path params, path exists with another method)."""
        other = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m:
                if route.method == method:
                    return route, m.groupdict(), False
                other = True
        return None, {}, other


class Service:
    """One simulated API.  Subclasses fill the router and define errors and auth."""

    name = "service"

    def __init__(self, faults: FaultInjector, record_call: Callable[[dict[str, Any]], None]) -> None:
        self.router = Router()
        self.faults = faults
        self.record_call = record_call

    def error(self, exc: HttpError) -> Response:
        return Response(exc.status, {"error": exc.message, "status": exc.status}, dict(exc.headers))

    def authenticate(self, request: Request) -> None:
        """Raise HttpError if the request may not proceed."""

    def after(self, request: Request, response: Response) -> None:
        """Called after each handled request, outside any handler lock."""


class SimServer:
    """Serves one :class:`Service` on a loopback port (0 = any free port)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the sandbox binds loopback addresses only, not {host}")
        self.service = service
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._clock = clock
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"sandbox-{self.service.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._conn_lock:
            for conn in list(self._connections):
                _drop(conn)
            self._connections.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 120  # idle keep-alive connections end eventually
            disable_nagle_algorithm = True  # headers and body go out in separate writes
            server_version = f"sandbox-{server.service.name}"

            def setup(self) -> None:
                super().setup()
                with server._conn_lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._conn_lock:
                    server._connections.discard(self.connection)
                with contextlib.suppress(OSError):  # the peer is gone; nothing left to flush
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s: " + format, server.service.name, *args)

            def do_GET(self) -> None:
                server._serve(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        return _Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        service = self.service
        started = self._clock()
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(min(length, MAX_BODY)) if length else b""
        request = Request(h.command, split.path, parse_qs(split.query, keep_blank_values=True), h.headers, body)
        route, params, other_method = service.router.match(request.method, request.path)
        request.params = params
        key = route.key if route else f"{request.method} {request.path}"
        decision = service.faults.decide(key)
        entry: dict[str, Any] = {
            "service": service.name, "time": started, "method": request.method, "path": request.path,
            "query": {k: v if len(v) > 1 else v[0] for k, v in request.query.items()}, "endpoint": key,
            "fault": None if decision.kind == "none" else decision.kind,
        }
        if decision.latency and self.closing.wait(decision.latency):
            return
        if decision.kind == "timeout":
            entry["status"] = None
            service.record_call(entry)
            self.closing.wait(decision.hold)
            self._hang_up(h)
            return
        response = self._respond(service, request, route, other_method, decision)
        entry["status"] = response.status
        entry.update(response.subject)
        service.record_call(entry)
        if route is not None and response.status < 400:
            service.after(request, response)
        if decision.kind == "lost_reply":
            self._hang_up(h)
            return
        self._send(h, response, decision.content_type)

    def _respond(self, service: Service, request: Request, route: Route | None, other_method: bool,
                 decision: Decision) -> Response:
        try:
            if decision.kind == "rate_limit":
                headers = {} if decision.retry_after is None else {"Retry-After": _fmt(decision.retry_after)}
                raise HttpError(429, "Rate limit reached. Please wait and consider throttling requests.", 971,
                                headers)
            if decision.kind == "error":
                raise HttpError(decision.status, "Injected fault: the server had a problem.", 1000)
            if route is None:
                raise HttpError(405 if other_method else 404, "Method not allowed" if other_method
                                else "Not found", 7000 if other_method else 7003)
            service.authenticate(request)
            return route.handler(request)
        except HttpError as exc:
            return service.error(exc)
        except Exception:
            log.exception("%s: handler for %s %s failed", service.name, request.method, request.path)
            return service.error(HttpError(500, "Internal sandbox error.", 1000))

    def _send(self, h: BaseHTTPRequestHandler, response: Response, content_type: str | None) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode("utf-8")
        try:
            h.send_response(response.status)
            if payload:
                h.send_header("Content-Type", content_type or JSON)
            for name, value in response.headers.items():
                h.send_header(name, value)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if payload:
                h.wfile.write(payload)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _hang_up(self, h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        _drop(h.connection)


def _drop(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        conn.shutdown(socket.SHUT_RDWR)


def _fmt(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
