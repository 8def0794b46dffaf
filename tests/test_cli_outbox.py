"""`provisioner outbox`: an operator sees what failed and queues it again, and only that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from provisioner import notify
from provisioner.cli import main
from provisioner.models import FAILED, PENDING, SENT, OutboxMessage, Server
from provisioner.notify.outbox import send_pending
from provisioner.wiring import App
from tests.fixtures.net import free_port
from tests.fixtures.notify import add_server, notify_app
from tests.fixtures.smtp import smtp_server


def _queue(app: App, server: Server, key: str) -> None:
    with app.sessions.begin() as s:
        notify.enqueue(s, "server_ready", server=s.get(Server, server.id), context={}, dedupe_key=key,
                       settings=app.settings)


def _statuses(app: App) -> dict[int, tuple[str, int]]:
    with app.sessions() as s:
        return {m.id: (m.status, m.attempts) for m in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))}


def _cli(tmp: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(tmp / "provisioner.toml"), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def failed_mail(tmp_path: Path) -> tuple[App, int]:
    """Three messages that used up their attempts while nothing listened on the SMTP port."""
    port = free_port()
    app = notify_app(tmp_path, smtp_port=port, max_attempts=1)
    server = add_server(app)
    for key in ("ready:1", "ready:2", "ready:3"):
        _queue(app, server, key)
    assert send_pending(app.sessions, app.settings.notify, app.clock()).failed == 3
    return app, port


def test_it_lists_failed_messages_with_their_error(tmp_path: Path, failed_mail: tuple[App, int],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(tmp_path, capsys, "outbox", "--status", "failed", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [m["status"] for m in listed] == [FAILED] * 3
    assert all(m["recipient"] == "customer@shop.test" and m["last_error"] for m in listed)
    code, out, _ = _cli(tmp_path, capsys, "outbox")
    assert code == 0 and out.count("failed") == 3 and "server_ready" in out


def test_a_retried_message_is_delivered_once_when_smtp_is_back(tmp_path: Path, failed_mail: tuple[App, int],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    app, port = failed_mail
    first = min(_statuses(app))
    code, out, _ = _cli(tmp_path, capsys, "outbox", "retry", str(first))
    assert code == 0 and f"#{first}" in out
    assert _statuses(app)[first] == (PENDING, 0)
    with smtp_server(port=port) as (inbox, _):
        assert send_pending(app.sessions, app.settings.notify, app.clock()).sent == 1
        assert send_pending(app.sessions, app.settings.notify, app.clock()).sent == 0
        assert len(inbox.snapshot()) == 1
    assert sorted(st for st, _ in _statuses(app).values()) == [FAILED, FAILED, SENT]
    app.engine.dispose()


def test_all_failed_requeues_every_failed_message(tmp_path: Path, failed_mail: tuple[App, int],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    app, _ = failed_mail
    code, out, _ = _cli(tmp_path, capsys, "outbox", "retry", "--all-failed")
    assert code == 0 and "3 message(s)" in out
    assert set(_statuses(app).values()) == {(PENDING, 0)}
    app.engine.dispose()


@pytest.mark.parametrize("args, needle", [
    (["retry"], "name the message ids to retry, or pass --all-failed"),
    (["retry", "{first}", "999"], "no outbox message with id 999"),
    (["retry", "{first}", "--all-failed"], "name the message ids to retry, or pass --all-failed"),
])
def test_bad_ids_are_refused_and_change_nothing(tmp_path: Path, failed_mail: tuple[App, int],
                                                capsys: pytest.CaptureFixture[str], args: list[str],
                                                needle: str) -> None:
    app, _ = failed_mail
    before = _statuses(app)
    first = min(before)
    code, _, err = _cli(tmp_path, capsys, "outbox", *(a.format(first=first) for a in args))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert _statuses(app) == before
    app.engine.dispose()


def test_a_sent_message_is_never_queued_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        _queue(app, add_server(app), "ready:1")
        assert send_pending(app.sessions, app.settings.notify, app.clock()).sent == 1
        [msg_id] = _statuses(app)
        code, _, err = _cli(tmp_path, capsys, "outbox", "retry", str(msg_id))
        assert code == 2 and f"#{msg_id} is sent" in err
        assert send_pending(app.sessions, app.settings.notify, app.clock()).sent == 0
        assert len(inbox.snapshot()) == 1
    app.engine.dispose()


def test_the_status_filter_offers_exactly_the_outbox_states() -> None:
    from provisioner.cli.outbox import STATUSES
    from provisioner.models import SENDING

    assert STATUSES == (PENDING, SENDING, SENT, FAILED)
