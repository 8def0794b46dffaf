"""The customer's changes reach their server: through the customer service, the worker's short
``sync`` and ``restart`` actions and every create and rebuild, against the sandbox over real
SSH (paramiko) to simulated hosts.

Logins are tried as the customer would: root with their own key, and root with the password
the dashboard shows (refused once key-only login is on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.x509 import load_pem_x509_crl
from sqlalchemy import select

from jobs.driver import drive_until_idle
from provisioner import customer, operations
from provisioner.cloud.ssh import SSHAuthFailed, SSHSession, SSHTarget
from provisioner.cloudinit import ClientKey, generate_client_key
from provisioner.lifecycle import Lifecycle
from provisioner.models import Server, ServerEvent, SSHKey
from provisioner.server_secrets import ServerSecrets
from tests.fixtures.hosts import password_login as login_with_password
from tests.fixtures.stack import Stack

CUSTOMER_KEY = generate_client_key("alice@laptop")


def row_of(stack: Stack, rid: int) -> Server:
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        return row


def change(stack: Stack, rid: int, do: Callable[[Any, Server, dt.datetime], Any]) -> Any:
    """One customer request, through the customer service, committed as the API does."""
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        result = do(s, row, stack.app.clock())
        s.commit()
        return result


def settle(stack: Stack, lc: Lifecycle, rid: int) -> None:
    """What the leader's loop does every second: start the customer's changes, then drive them."""
    operations.start_customer_changes(lc, stack.app.clock())
    drive_until_idle(lc, [rid], timeout=60)


def step_until(stack: Stack, lc: Lifecycle, rid: int, done: Callable[[Server], bool], timeout: float = 60) -> bool:
    """Carry the row one step at a time (as the driver does, polls included) until ``done(row)``."""
    import threading
    import time

    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not done(row_of(stack, rid)):
        if time.monotonic() > deadline:
            return False
        lc.advance(rid, max_steps=1)
        tick.wait(0.02)
    return True


def pin(stack: Stack, row: Server) -> str:
    return ServerSecrets.open(stack.app.secret_box, row.secrets_enc or "").host_public


def key_login(stack: Stack, row: Server, key: ClientKey = CUSTOMER_KEY) -> str:
    """Log in as root with the customer's key (the server's pinned host key checked) and run a command."""
    target = SSHTarget(row.server_ip or "", stack.app.settings.ssh.port, pin(stack, row))
    with SSHSession(target, key.private_pem, connect_timeout=5, auth_timeout=5) as ssh:
        return ssh.run("cat /root/.ssh/authorized_keys", timeout=10).stdout


def password_login(stack: Stack, row: Server) -> bool:
    """Whether root gets in with the root password the dashboard shows."""
    password = stack.app.secret_box.open(row.root_password_enc or "").decode()
    return login_with_password(row.server_ip or "", stack.app.settings.ssh.port, password, pin(stack, row))


def worker_key(stack: Stack) -> ClientKey:
    with open(stack.app.settings.ssh.private_key_file) as f:
        return ClientKey.from_private_pem(f.read())


def events(stack: Stack, rid: int) -> list[tuple[str, str]]:
    with stack.app.sessions() as s:
        return [(e.what, e.outcome) for e in s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid)
                                                        .order_by(ServerEvent.id))]


def test_a_server_is_built_with_the_customers_key_and_a_rebuild_keeps_it(stack: Stack) -> None:
    # Given a key the customer added while their server was still queued
    lc = stack.lifecycle()
    rid = stack.begin_create(lc=lc)
    change(stack, rid, lambda s, row, now: customer.add_ssh_key(s, row, CUSTOMER_KEY.public_line, now=now))
    # When the server is built
    drive_until_idle(lc, [rid], timeout=60)
    row = row_of(stack, rid)
    assert row.status == "Running", row.last_error
    # Then the customer logs in with their key, and with the root password; nothing is left to send
    assert CUSTOMER_KEY.public_line in key_login(stack, row)
    assert password_login(stack, row)
    assert row.access_pending_since is None
    # And the worker's own key still works (it is outside the customer's block)
    assert key_login(stack, row, worker_key(stack))
    # When the server is rebuilt elsewhere
    stack.act(rid, "rebuild", "ams", lc=lc)
    after = row_of(stack, rid)
    assert after.status == "Running" and after.instance_id != row.instance_id
    # Then the new instance has the key too, and a new root password that logs in
    assert CUSTOMER_KEY.public_line in key_login(stack, after)
    assert after.root_password_enc != row.root_password_enc and password_login(stack, after)


def test_key_only_login_refuses_the_password_now_and_after_a_rebuild(stack: Stack) -> None:
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    assert password_login(stack, row_of(stack, rid))
    # When the customer adds a key and turns key-only login on, and the worker's sync runs
    change(stack, rid, lambda s, row, now: customer.add_ssh_key(s, row, CUSTOMER_KEY.public_line, now=now))
    change(stack, rid, lambda s, row, now: customer.set_key_only(s, row, True, now=now))
    assert row_of(stack, rid).access_pending_since is not None
    settle(stack, lc, rid)
    row = row_of(stack, rid)
    # Then the password is refused, the key works, and the sync is in the audit trail
    assert row.access_pending_since is None and row.status == "Running"
    assert not password_login(stack, row)
    assert CUSTOMER_KEY.public_line in key_login(stack, row)
    assert ("sync.push", "ok") in events(stack, rid) and ("sync.done", "ok") in events(stack, rid)
    # And after a rebuild too
    stack.act(rid, "rebuild", "random", lc=lc)
    after = row_of(stack, rid)
    assert after.instance_id != row.instance_id
    assert not password_login(stack, after) and CUSTOMER_KEY.public_line in key_login(stack, after)
    # When the key is removed (key-only off first), it no longer logs in
    change(stack, rid, lambda s, row, now: customer.set_key_only(s, row, False, now=now))
    key_id = change(stack, rid, lambda s, row, now: s.scalar(select(SSHKey.id).where(SSHKey.server_id == rid)))
    change(stack, rid, lambda s, row, now: customer.remove_ssh_key(s, row, key_id, now=now))
    settle(stack, lc, rid)
    after = row_of(stack, rid)
    with pytest.raises(SSHAuthFailed):
        key_login(stack, after)
    assert password_login(stack, after)


def crl_serials(stack: Stack, row: Server) -> set[int]:
    crl = stack.hosts.root_dir / (row.instance_id or "") / "etc/openvpn/server/crl.pem"
    return {entry.serial_number for entry in load_pem_x509_crl(crl.read_bytes())}


def test_a_revoked_devices_crl_reaches_the_running_server_and_survives_a_rebuild(stack: Stack) -> None:
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    box = stack.app.secret_box
    change(stack, rid, lambda s, row, now: customer.add_device(s, stack.app.settings, box, row, "Phone", now=now))
    assert row_of(stack, rid).access_pending_since is None      # adding needs nothing on the server
    change(stack, rid, lambda s, row, now: customer.revoke_device(s, box, row, "2", now=now))
    phone = ServerSecrets.open(box, row_of(stack, rid).secrets_enc or "").openvpn().device("2").serial
    assert phone not in crl_serials(stack, row_of(stack, rid))
    settle(stack, lc, rid)
    row = row_of(stack, rid)
    assert phone in crl_serials(stack, row) and row.access_pending_since is None
    stack.act(rid, "rebuild", "ams", lc=lc)
    after = row_of(stack, rid)
    assert after.instance_id != row.instance_id and phone in crl_serials(stack, after)


def test_a_revocation_during_a_rebuild_is_not_lost(stack: Stack) -> None:
    # Given a rebuild that has installed the new instance (with the CRL of that moment)
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    box = stack.app.secret_box
    change(stack, rid, lambda s, row, now: customer.add_device(s, stack.app.settings, box, row, "Phone", now=now))
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        lc.begin_rebuild(s, row, "ams", actor="test")
        s.commit()
    assert step_until(stack, lc, rid, lambda row: row.step == "dns")
    # When the customer revokes the phone now, and the rebuild goes on to its end
    change(stack, rid, lambda s, row, now: customer.revoke_device(s, box, row, "2", now=now))
    drive_until_idle(lc, [rid], timeout=60)
    rebuilt = row_of(stack, rid)
    phone = ServerSecrets.open(box, rebuilt.secrets_enc or "").openvpn().device("2").serial
    assert rebuilt.status == "Running" and rebuilt.action is None
    assert phone not in crl_serials(stack, rebuilt) and rebuilt.access_pending_since is not None
    # Then the sync that follows the rebuild brings the new CRL to the new instance
    settle(stack, lc, rid)
    assert phone in crl_serials(stack, row_of(stack, rid)) and row_of(stack, rid).access_pending_since is None


def test_location_and_address_move_together_during_a_rebuild(stack: Stack) -> None:
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    before = row_of(stack, rid)
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        lc.begin_rebuild(s, row, "ams", actor="test")
        s.commit()
    seen = set()

    def look(now: Server) -> bool:
        seen.add((now.step, now.server_ip == before.server_ip, now.current_location))
        return now.action is None

    assert step_until(stack, lc, rid, look)
    after = row_of(stack, rid)
    # before DNS moves: the old address and location; after: the new ones, never a mix
    assert all((same, where) in ((True, before.current_location), (False, "ams")) for _, same, where in seen), seen
    assert ("install", True, before.current_location) in seen and ("carry", False, "ams") in seen
    assert after.new_ip is None and after.current_location == "ams"


def test_the_customer_restarts_their_server(stack: Stack) -> None:
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    change(stack, rid, lambda s, row, now: customer.request_restart(s, stack.app.settings, row, now=now))
    settle(stack, lc, rid)
    row = row_of(stack, rid)
    assert (row.status, row.action, row.restart_pending) == ("Running", None, False)
    assert [e for e in events(stack, rid) if e[0].startswith("restart.")] == [
        ("restart.requested", "info"), ("restart.requested", "info"), ("restart.reboot", "started"),
        ("restart.reboot", "ok"), ("restart.settle", "started"), ("restart.settle", "ok"), ("restart.done", "ok")]
    reboots = [c for c in stack.sandbox.calls() if c["method"] == "POST" and c["path"].endswith("/reboot")]
    assert len(reboots) == 1 and row.instance_id in reboots[0]["path"]


def test_its_logs_hold_no_root_password_or_customer_secret(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    box = stack.app.secret_box
    change(stack, rid, lambda s, row, now: customer.add_device(s, stack.app.settings, box, row, "Phone", now=now))
    profile, _ = change(stack, rid, lambda s, row, now: customer.device_profile(s, box, row, "2"))
    password = change(stack, rid, lambda s, row, now: customer.reveal_root_password(
        s, stack.app.settings, box, row, actor="customer", now=now))
    change(stack, rid, lambda s, row, now: customer.revoke_device(s, box, row, "2", now=now))
    settle(stack, lc, rid)
    key_lines = [line for line in profile.decode().split("<key>")[1].splitlines() if len(line) > 20]
    assert password and key_lines
    for needle in [password, *key_lines,
                   CUSTOMER_KEY.private_pem.splitlines()[1]]:
        assert needle not in caplog.text
    assert "root_password.viewed" in caplog.text   # the view itself is in the journal
