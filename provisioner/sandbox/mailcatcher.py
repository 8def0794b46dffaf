"""SIMULATOR ONLY: the sandbox's mail catcher, a plain SMTP server on loopback that keeps
every message it is given (the demo's customer mail and operator alerts) in memory.

Speaks just enough SMTP for :mod:`smtplib` without TLS or AUTH (``notify.smtp_security =
"none"``): HELO/EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. The admin API lists what it caught
(``GET /_sandbox/mail``); ``provisioner sandbox mail`` prints it.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import socketserver
import threading
import time
from collections import deque
from email.message import EmailMessage
from typing import Any, cast

MAX_MESSAGES = 500
MAX_MESSAGE_BYTES = 1 << 20
IDLE_SECONDS = 30.0


class MailCatcher:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the mail catcher listens on loopback only, not {host}")
        self._messages: deque[dict[str, Any]] = deque(maxlen=MAX_MESSAGES)
        self._lock = threading.Lock()
        catcher = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = IDLE_SECONDS

            def handle(self) -> None:
                catcher._session(self)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="sandbox-mail", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)

    # --- one SMTP session ---------------------------------------------------------------------

    def _session(self, h: socketserver.StreamRequestHandler) -> None:
        def say(line: str) -> None:
            h.wfile.write(line.encode("ascii") + b"\r\n")
            h.wfile.flush()

        say("220 sandbox mail catcher")
        sender, recipients = "", list[str]()
        while True:
            try:
                raw = h.rfile.readline(1000)
            except OSError:
                return
            if not raw:
                return
            verb, _, arg = raw.decode("utf-8", "replace").strip().partition(" ")
            verb = verb.upper()
            if verb in ("HELO", "EHLO"):
                say("250 sandbox")
            elif verb == "MAIL":
                sender, recipients = _address(arg), []
                say("250 OK")
            elif verb == "RCPT":
                recipients.append(_address(arg))
                say("250 OK")
            elif verb == "DATA":
                if not recipients:
                    say("503 RCPT first")
                    continue
                say("354 end with <CRLF>.<CRLF>")
                data = self._read_data(h)
                if data is None:
                    return
                self._keep(sender, recipients, data)
                say("250 caught")
                sender, recipients = "", []
            elif verb in ("RSET", "NOOP"):
                sender, recipients = ("", []) if verb == "RSET" else (sender, recipients)
                say("250 OK")
            elif verb == "QUIT":
                say("221 bye")
                return
            else:
                say("502 not implemented")

    @staticmethod
    def _read_data(h: socketserver.StreamRequestHandler) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            line = h.rfile.readline(MAX_MESSAGE_BYTES)
            if not line:
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            size += len(line)
            if size > MAX_MESSAGE_BYTES:
                return None
            lines.append(line[1:] if line.startswith(b"..") else line)

    def _keep(self, sender: str, recipients: list[str], data: bytes) -> None:
        msg = cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))
        body = msg.get_body(preferencelist=("plain",))
        with self._lock:
            self._messages.append({
                "at": time.time(), "from": sender, "to": recipients, "subject": str(msg.get("Subject", "")),
                "kind": str(msg.get("X-Provisioner-Kind", "")),
                "body": str(body.get_content()) if body is not None else ""})


def _address(arg: str) -> str:
    _, _, rest = arg.partition(":")
    return rest.strip().strip("<>").split(">", 1)[0]
