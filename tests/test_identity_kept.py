"""A late renewal gets the same .ovpn: a destroyed server keeps its name and sealed PKI for
lifecycle.keep_identity_days (30), on SQLite and MariaDB."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from jobs import registry
from provisioner.models import OutboxMessage
from tests.fixtures.stack import Stack

DAY = dt.timedelta(days=1)


def _ovpn(stack: Stack, rid: int) -> bytes:
    return stack.app.secret_box.open(stack.row(rid).ovpn_file_enc or "")


def test_a_renewal_within_the_kept_days_revives_the_same_name_and_ovpn(db_stack: Stack) -> None:
    # Given a running server and its customer's .ovpn
    rid = db_stack.create_server(1, "ann@example.com")
    before, name = _ovpn(db_stack, rid), db_stack.row(rid).server_name

    # When it is destroyed, and the customer renews 29 days later
    db_stack.destroyed_then_renewed_after(rid, 29 * DAY)

    # Then it is running again under the same name, with byte for byte the same .ovpn
    after = db_stack.row(rid)
    assert (after.status, after.server_name, after.generation) == ("Running", name, 1)
    assert _ovpn(db_stack, rid) == before
    # and the destroy mail told the customer until when
    with db_stack.app.sessions() as s:
        mail = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "server_destroyed")).one()
    assert "If you renew before" in mail.body and "same name" in mail.body


def test_a_renewal_after_the_kept_days_gets_a_fresh_pki(db_stack: Stack) -> None:
    rid = db_stack.create_server(1, "ann@example.com")
    before = _ovpn(db_stack, rid)

    db_stack.destroyed_then_renewed_after(rid, 31 * DAY)

    after = db_stack.row(rid)
    assert after.status == "Running"
    assert _ovpn(db_stack, rid) != before


def test_the_job_wipes_kept_identities_once_their_time_is_up(db_stack: Stack) -> None:
    rid = db_stack.create_server(1, "ann@example.com")
    db_stack.act(rid, "destroy")
    kept = db_stack.row(rid)
    assert kept.secrets_enc and kept.ovpn_file_enc is None and kept.root_password_enc is None
    assert kept.identity_kept_until is not None

    lc = db_stack.lifecycle()
    assert registry.job(db_stack.app, "expire_identities", lc)().wiped == 0      # not yet
    db_stack.app.clock = lambda: kept.identity_kept_until + dt.timedelta(seconds=1)
    assert registry.job(db_stack.app, "expire_identities", lc)().wiped == 1
    gone = db_stack.row(rid)
    assert gone.secrets_enc is None and gone.server_name == kept.server_name
