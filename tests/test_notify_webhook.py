"""The signed webhook copy of each notification, against a local http.server receiver."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

from sqlalchemy import select

from provisioner import notify
from provisioner.models import PENDING, SENT, OutboxMessage, Server
from provisioner.notify.outbox import BACKOFF_BASE, send_pending
from tests.fixtures.notify import SECRET_VALUES, add_server, notify_app, webhook_receiver

NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=dt.UTC)
HOOK_SECRET = "hook-secret-0123456789"


def expected_signature(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    parts = dict(p.split("=", 1) for p in headers["x-provisioner-signature"].split(","))
    t = int(parts["t"])
    mac = hmac.new(HOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return t, mac if hmac.compare_digest(mac, parts["v1"]) else "mismatch"


def test_it_posts_a_correctly_signed_copy(tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        app = notify_app(tmp_path, smtp_host="", webhook_url=hook.url, webhook_secret=HOOK_SECRET)
        server = add_server(app)
        with app.sessions.begin() as s:
            assert notify.enqueue(s, "bandwidth_80", server=s.get(Server, server.id),
                                  context={"used_gb": 800, "cap_gb": 1000, "month": "2026-05"},
                                  dedupe_key=f"bandwidth_80:{server.id}:2026-05", settings=app.settings,
                                  now=NOW) == 2           # email (waits: no smtp_host) + webhook
        report = send_pending(app.sessions, app.settings.notify, NOW)
        assert (report.sent, report.waiting) == (1, 1)
        [(headers, body)] = hook.calls
    t, mac = expected_signature(headers, body)
    assert mac != "mismatch" and t == int(NOW.timestamp())
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["kind"] == "bandwidth_80" and doc["dedupe_key"] == f"bandwidth_80:{server.id}:2026-05"
    assert doc["data"]["context"]["used_gb"] == 800 and doc["data"]["server"]["name"] == "g0001.vpn.example.com"
    assert headers["x-provisioner-delivery"] == doc["id"]
    assert not any(secret in body.decode() for secret in SECRET_VALUES)
    app.engine.dispose()


def test_it_retries_a_webhook_the_receiver_refused(tmp_path: Path) -> None:
    with webhook_receiver() as hook:
        hook.status = 503
        app = notify_app(tmp_path, smtp_host="", webhook_url=hook.url, webhook_secret=HOOK_SECRET)
        server = add_server(app)
        with app.sessions.begin() as s:
            notify.enqueue(s, "server_destroyed", server=s.get(Server, server.id), context={},
                           dedupe_key=f"destroyed:{server.id}", settings=app.settings, now=NOW)
        assert send_pending(app.sessions, app.settings.notify, NOW).retried == 1
        with app.sessions() as s:
            row = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "webhook")).one()
            # retried after the backoff rule's first wait: between half a minute and a minute
            assert row.status == PENDING and NOW + BACKOFF_BASE / 2 <= row.next_attempt_at <= NOW + BACKOFF_BASE
        hook.status = 204
        assert send_pending(app.sessions, app.settings.notify, NOW + BACKOFF_BASE).sent == 1
        assert len(hook.calls) == 2
        with app.sessions() as s:
            assert s.scalars(select(OutboxMessage.status).where(OutboxMessage.channel == "webhook")).one() == SENT
    app.engine.dispose()
