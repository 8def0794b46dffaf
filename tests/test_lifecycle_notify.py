"""The lifecycle tells people what happened, through the outbox, once per event."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from provisioner import operations
from provisioner.models import OutboxMessage, Server
from tests.fixtures.stack import Stack

NOTIFY = {"notify": {"operator_email": "ops@example.com"}}


def _messages(stack: Stack) -> list[tuple[str, str]]:
    with stack.app.sessions() as s:
        return [(m.kind, m.recipient) for m in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def _run(stack: Stack, sub_id: int = 1) -> int:
    result, _ = stack.app.plan_once()
    lc = stack.lifecycle()
    operations.start_plan(lc, result)
    operations.drive_until_idle(lc, timeout=60)
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


@pytest.mark.parametrize("stack", [NOTIFY], indirect=True)
def test_it_alerts_the_operator_once_when_a_server_needs_a_human(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 3, "error_status": 400}}})
    _run(stack)
    assert _messages(stack) == [("needs_attention", "ops@example.com")]
