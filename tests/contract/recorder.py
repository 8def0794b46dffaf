"""A recording HTTP proxy on loopback: the adapters talk to the sandbox through it, and it
keeps every exchange exactly as it crossed the wire (method, path, query, headers, body of
the request; status, headers, body of the reply) for the contract checks.

It sits outside both SDKs (requests for Vultr, httpx for Cloudflare), so what it records is
what the real API would receive and what our sandbox really answered.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authorization", "proxy-authenticate", "content-length", "host"})


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    query: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.method} {self.path}{query} -> {self.status}"


class RecordingProxy:
    """Forwards everything to ``upstream`` (``http://127.0.0.1:PORT``) and records it."""

    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        assert split.hostname is not None and split.port is not None
        self._upstream = (split.hostname, split.port)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="contract-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def take(self) -> list[Exchange]:
        """The exchanges recorded since the last call."""
        with self._lock:
            taken, self.exchanges = self.exchanges, []
        return taken

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str],
                                                                                               bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            reply = conn.getresponse()
            return reply.status, {k: v for k, v in reply.getheaders()}, reply.read()
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                status, reply_headers, reply_body = proxy._forward(self.command, self.path, headers, body)
                split = urlsplit(self.path)
                with proxy._lock:
                    proxy.exchanges.append(Exchange(self.command, split.path, split.query, headers, body,
                                                    status, reply_headers, reply_body))
                self.send_response(status)
                for name, value in reply_headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply_body)))
                self.end_headers()
                self.wfile.write(reply_body)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        return Handler
