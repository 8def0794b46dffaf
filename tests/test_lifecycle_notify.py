"""The lifecycle tells people what happened, through the outbox, once per event."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from jobs.driver import drive_until_idle
from provisioner import operations
from provisioner.models import OutboxMessage, Server
from tests.fixtures.stack import Stack

NOTIFY = {"notify": {"operator_email": "ops@example.com"}}          # no SMTP server: alerts land nowhere
NOTIFY_WITH_CHANNEL = {"notify": {"operator_email": "ops@example.com", "smtp_host": "127.0.0.1", "smtp_port": 9}}


def _messages(stack: Stack) -> list[tuple[str, str]]:
    with stack.app.sessions() as s:
        return [(m.kind, m.recipient) for m in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def _run(stack: Stack, sub_id: int = 1) -> int:
    result, _ = stack.app.plan_once()
    lc = stack.lifecycle()
    operations.start_plan(lc, result)
    drive_until_idle(lc, timeout=60)
    with stack.app.sessions() as s:
        return s.scalars(select(Server.id).where(Server.subscription_id == str(sub_id))).one()


@pytest.mark.parametrize("stack", [NOTIFY], indirect=True)
def test_it_tells_the_customer_when_the_server_is_ready_and_when_it_is_destroyed(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    rid = _run(stack)
    assert _messages(stack) == [("server_ready", "ann@example.com")]
    _run(stack)  # nothing new happened: nothing new is sent
    assert _messages(stack) == [("server_ready", "ann@example.com")]
    stack.act(rid, "destroy")
    assert _messages(stack)[-1] == ("server_destroyed", "ann@example.com")
    with stack.app.sessions() as s:
        body = s.scalars(select(OutboxMessage.body)).first() or ""
    assert "BEGIN" not in body and "g0001" in body


@pytest.mark.parametrize("stack", [NOTIFY_WITH_CHANNEL], indirect=True)
def test_it_alerts_the_operator_each_time_a_server_stops_for_a_human(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 3, "error_status": 400}}})
    rid = _run(stack)
    # the operator is alerted; the customer is told it takes longer, and (truly) that the team knows
    assert _messages(stack) == [("needs_attention", "ops@example.com"), ("provisioning_delayed", "ann@example.com")]
    assert "our team has been alerted" in _body(stack, "provisioning_delayed")
    _run(stack)                          # nothing new happened: nothing new is sent
    assert len(_messages(stack)) == 2

    # When the operator retries and the same step fails again
    lc = stack.lifecycle()
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None and row.needs_human and row.human_alerted_at is not None
        lc.retry(s, row, actor="operator:test")
        s.commit()
    drive_until_idle(lc, [rid], timeout=30)

    # Then the operator is alerted again (the customer was already told)
    assert _messages(stack)[2:] == [("needs_attention", "ops@example.com")]


@pytest.mark.parametrize("stack", [NOTIFY], indirect=True)
def test_without_an_operator_channel_nobody_claims_the_team_was_alerted(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 1, "error_status": 400}}})
    rid = _run(stack)
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None and row.needs_human and row.human_alerted_at is None
    body = _body(stack, "provisioning_delayed")
    assert "alerted" not in body and "retrying" in body


def _body(stack: Stack, kind: str) -> str:
    with stack.app.sessions() as s:
        return s.scalars(select(OutboxMessage.body).where(OutboxMessage.kind == kind)).one()
