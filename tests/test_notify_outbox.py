"""The outbox: atomic with the caller, deduplicated, claimed once, retried until delivered."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from provisioner import notify
from provisioner.models import FAILED, PENDING, SENDING, SENT, OutboxMessage, Server
from provisioner.notify import outbox
from provisioner.notify.outbox import BACKOFF_BASE, LEASE, claim, send_pending
from provisioner.wiring import App
from tests.fixtures.net import free_port
from tests.fixtures.notify import add_server, notify_app
from tests.fixtures.smtp import smtp_server

NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def queue(app: App, server: Server, key: str, kind: str = "server_ready") -> int:
    with app.sessions.begin() as s:
        return notify.enqueue(s, kind, server=s.get(Server, server.id), context={}, dedupe_key=key,
                              settings=app.settings, now=NOW)


def rows(app: App) -> list[OutboxMessage]:
    with app.sessions() as s:
        return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_it_sends_one_email_for_a_key_enqueued_twice(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        server = add_server(app)
        assert queue(app, server, f"ready:{server.id}:1") == 1
        assert queue(app, server, f"ready:{server.id}:1") == 0
        assert len(rows(app)) == 1
        assert send_pending(app.sessions, app.settings.notify, NOW).sent == 1
        assert send_pending(app.sessions, app.settings.notify, NOW + MINUTE).sent == 0
        assert len(inbox.snapshot()) == 1
    [row] = rows(app)
    assert (row.status, row.attempts, row.sent_at) == (SENT, 1, NOW)
    app.engine.dispose()


def test_it_deduplicates_on_mariadb_too(tmp_path: Path, db_url: str) -> None:
    app = notify_app(tmp_path, db_url=db_url)
    server = add_server(app)
    assert [queue(app, server, "bw:1"), queue(app, server, "bw:1"), queue(app, server, "bw:2")] == [1, 0, 1]
    assert [r.dedupe_key for r in rows(app)] == ["bw:1", "bw:2"]
    app.engine.dispose()


def test_it_writes_nothing_when_the_callers_transaction_rolls_back(tmp_path: Path) -> None:
    app = notify_app(tmp_path)
    server = add_server(app)
    with app.sessions() as s:
        srv = s.get(Server, server.id)
        assert srv is not None
        srv.status = "Running"
        notify.enqueue(s, "server_ready", server=srv, context={}, dedupe_key="ready:1", settings=app.settings)
        s.rollback()
    assert rows(app) == []
    app.engine.dispose()


def test_it_delivers_every_message_exactly_once_after_the_smtp_server_comes_back(tmp_path: Path) -> None:
    port = free_port()                   # nothing listens here yet
    app = notify_app(tmp_path, smtp_port=port, max_attempts=10)
    servers = [add_server(app, sub=f"sub_{i}", name=f"g{i:04d}.vpn.example.com", email=f"c{i}@shop.test")
               for i in range(5)]
    for srv in servers:
        queue(app, srv, f"ready:{srv.id}")
    down = send_pending(app.sessions, app.settings.notify, NOW)
    assert (down.sent, down.retried, down.failed) == (0, 5, 0)
    assert {r.status for r in rows(app)} == {PENDING}
    # the first retry waits between half and all of a minute (jitter spreads a backlog out)
    not_yet = NOW + BACKOFF_BASE / 2 - dt.timedelta(seconds=1)
    assert send_pending(app.sessions, app.settings.notify, not_yet).retried == 0
    down_again = send_pending(app.sessions, app.settings.notify, NOW + BACKOFF_BASE)
    assert down_again.retried == 5
    with smtp_server(port) as (inbox, _):
        t = NOW + BACKOFF_BASE + 2 * BACKOFF_BASE
        up = send_pending(app.sessions, app.settings.notify, t)
        assert up.sent == 5
        assert send_pending(app.sessions, app.settings.notify, t + dt.timedelta(hours=2)).sent == 0
        got = sorted(r for m in inbox.snapshot() for r in m.rcpt_tos)
    assert got == [f"c{i}@shop.test" for i in range(5)]
    assert [(r.status, r.attempts) for r in rows(app)] == [(SENT, 3)] * 5
    assert all(r.last_error is None for r in rows(app))
    app.engine.dispose()


def test_it_gives_up_after_max_attempts_and_says_so_at_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = notify_app(tmp_path, smtp_port=free_port(), max_attempts=3)
    queue(app, add_server(app), "ready:1")
    t = NOW
    with caplog.at_level(logging.WARNING, logger="provisioner.notify.outbox"):
        for _ in range(3):
            send_pending(app.sessions, app.settings.notify, t)
            t += dt.timedelta(hours=2)
        assert send_pending(app.sessions, app.settings.notify, t).did_work is False
    [row] = rows(app)
    assert (row.status, row.attempts) == (FAILED, 3)
    assert row.last_error and "127.0.0.1" in row.last_error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "giving up" in errors[0].getMessage()
    app.engine.dispose()


def test_it_lets_only_one_worker_claim_a_row(tmp_path: Path) -> None:
    app = notify_app(tmp_path)
    queue(app, add_server(app), "ready:1")
    [row] = rows(app)
    first = claim(app.sessions, row.id, 0, NOW)
    second = claim(app.sessions, row.id, 0, NOW)        # a second worker read the same snapshot
    assert first is not None and first.attempts == 1
    assert second is None
    [after] = rows(app)
    assert (after.status, after.attempts, after.lease_until) == (SENDING, 1, NOW + LEASE)
    app.engine.dispose()


def test_it_takes_back_a_row_whose_sender_died_mid_send(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        queue(app, add_server(app), "ready:1")
        [row] = rows(app)
        assert claim(app.sessions, row.id, 0, NOW) is not None     # ... and then the worker was killed
        still_leased = NOW + LEASE - dt.timedelta(seconds=1)
        assert send_pending(app.sessions, app.settings.notify, still_leased).sent == 0
        report = send_pending(app.sessions, app.settings.notify, NOW + LEASE)
        assert (report.recovered, report.sent) == (1, 1)
        assert len(inbox.snapshot()) == 1
    [after] = rows(app)
    assert (after.status, after.attempts) == (SENT, 2)
    app.engine.dispose()


def test_it_keeps_email_pending_while_no_smtp_host_is_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = notify_app(tmp_path, smtp_host="")
    queue(app, add_server(app), "ready:1")
    outbox._said_waiting.clear()
    with caplog.at_level(logging.WARNING, logger="provisioner.notify.outbox"):
        first = send_pending(app.sessions, app.settings.notify, NOW)
        second = send_pending(app.sessions, app.settings.notify, NOW + MINUTE)
    assert (first.waiting, first.sent, second.waiting) == (1, 0, 1)
    [row] = rows(app)
    assert (row.status, row.attempts) == (PENDING, 0)
    said = [r for r in caplog.records if "notify.smtp_host is not set" in r.getMessage()]
    assert len(said) == 1      # once per process, not every minute
    assert "1 email message(s) waiting" in said[0].getMessage()
    # no webhook is configured and none was queued: nothing to say about it
    assert not [r for r in caplog.records if "webhook_url" in r.getMessage()]
    app.engine.dispose()


def test_it_fails_a_permanently_refused_recipient_at_once(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        inbox.rcpt_reply = "550 5.1.1 no such user"
        app = notify_app(tmp_path, smtp_port=port, max_attempts=10)
        queue(app, add_server(app), "ready:1")
        report = send_pending(app.sessions, app.settings.notify, NOW)
    assert (report.failed, report.retried) == (1, 0)
    [row] = rows(app)
    assert (row.status, row.attempts) == (FAILED, 1) and "550" in (row.last_error or "")
    app.engine.dispose()


def test_it_retries_a_temporarily_refused_recipient(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        inbox.rcpt_reply = "451 4.7.1 greylisted, try later"
        app = notify_app(tmp_path, smtp_port=port)
        queue(app, add_server(app), "ready:1")
        assert send_pending(app.sessions, app.settings.notify, NOW).retried == 1
        inbox.rcpt_reply = None
        assert send_pending(app.sessions, app.settings.notify, NOW + BACKOFF_BASE).sent == 1
        assert len(inbox.snapshot()) == 1
    app.engine.dispose()


def test_it_sends_the_operator_alert_only_to_the_webhook_when_no_operator_email(tmp_path: Path) -> None:
    app = notify_app(tmp_path, operator_email="", webhook_url="http://127.0.0.1:9/hook", webhook_secret="s")
    server = add_server(app)
    with app.sessions.begin() as s:
        added = notify.enqueue(s, "needs_attention", server=s.get(Server, server.id), context={"error": "boom"},
                               dedupe_key="attention:1", settings=app.settings, now=NOW)
    assert added == 1
    assert [(r.channel, r.dedupe_key, r.recipient) for r in rows(app)] == [
        ("webhook", "attention:1:webhook", "127.0.0.1:9")]     # the host only: URLs may carry tokens
    app.engine.dispose()
