"""Create, rebuild and destroy against the sandbox, through the real SDKs and real SSH."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from jobs.driver import drive_until_idle
from provisioner.lifecycle import Lifecycle
from provisioner.models import Server, ServerEvent
from provisioner.vpn.config import validate_ovpn
from tests.fixtures.stack import Stack


def _row(stack: Stack, rid: int) -> Server:
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        return row


def _begin_create(stack: Stack, lc: Lifecycle) -> int:
    """A subscription and its server's create, started but not driven."""
    stack.add_subscription(1, "ann@example.com")
    sub = stack.app.find_subscription("1")
    assert sub is not None
    with stack.app.sessions() as s:
        rid = lc.begin_create(s, sub).id
        s.commit()
    return rid


def _ours(stack: Stack) -> tuple[list, list, list]:
    st = stack.state()
    tag = stack.app.settings.vultr.tag
    return ([i for i in st["instances"] if tag in i["tags"]], st["records"],
            [s for s in st["snapshots"] if s["description"].startswith(stack.app.settings.vultr.label_prefix)])


def test_it_creates_a_running_server_with_dns_and_a_working_ovpn(stack: Stack) -> None:
    rid = stack.create_server()
    row = _row(stack, rid)
    assert row.status == "Running", row.last_error
    assert row.server_name == f"g0{rid:03d}.vpn.example.test"
    instances, records, snapshots = _ours(stack)
    assert [i["id"] for i in instances] == [row.instance_id]
    assert instances[0]["label"] == f"prov-{rid}-g0"
    assert [(r["name"], r["content"], r["proxied"]) for r in records] == [(row.server_name, row.server_ip, False)]
    assert len(snapshots) == 1 and row.snapshot_id == snapshots[0]["id"]
    ovpn = stack.app.secret_box.open(row.ovpn_file_enc or "")
    validate_ovpn(ovpn)
    assert f"remote {row.server_name} 1194".encode() in ovpn
    # the provider's root password is stored, and only encrypted
    assert row.root_password_enc and stack.app.secret_box.open(row.root_password_enc)
    # the simulated host really received the install and the PKI
    host_dir = stack.hosts.root_dir / (row.instance_id or "")
    assert (host_dir / "var/lib/provisioner/installed").exists()


def test_it_records_every_step_before_and_after_its_side_effect(stack: Stack) -> None:
    rid = stack.create_server()
    with stack.app.sessions() as s:
        events = [(e.what, e.outcome) for e in s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid)
                                                        .order_by(ServerEvent.id))]
    for step in ("prepare", "instance", "boot", "install", "dns", "snapshot", "finish"):
        started = events.index((f"create.{step}", "started"))
        assert events.index((f"create.{step}", "ok")) > started
    assert events[-1] == ("create.done", "ok")


def test_it_rebuilds_into_another_region_keeping_name_and_exact_ovpn(stack: Stack) -> None:
    rid = stack.create_server()
    before = _row(stack, rid)
    ovpn_before = stack.app.secret_box.open(before.ovpn_file_enc or "")
    stack.act(rid, "rebuild", "ams")
    after = _row(stack, rid)
    assert after.status == "Running", after.last_error
    assert (after.server_name, after.current_location, after.generation) == (before.server_name, "ams", 1)
    assert after.instance_id != before.instance_id and after.server_ip != before.server_ip
    assert stack.app.secret_box.open(after.ovpn_file_enc or "") == ovpn_before
    instances, records, _ = _ours(stack)
    assert [(i["id"], i["region"]) for i in instances] == [(after.instance_id, "ams")]
    assert [(r["name"], r["content"]) for r in records] == [(after.server_name, after.server_ip)]
    assert after.old_instance_id is None and after.bandwidth_carried > 0


def test_it_destroys_leaving_nothing_of_ours_behind(stack: Stack) -> None:
    rid = stack.create_server()
    stack.act(rid, "destroy")
    row = _row(stack, rid)
    assert row.status == "Destroyed"
    # only the sealed PKI stays, for lifecycle.keep_identity_days (a late renewal's same .ovpn)
    assert row.secrets_enc and row.identity_kept_until is not None
    assert (row.ovpn_file_enc, row.root_password_enc, row.instance_id, row.server_ip) == (None, None, None, None)
    assert _ours(stack) == ([], [], [])


@pytest.mark.parametrize("stack", [{"lifecycle": {"keep_identity_days": 0}}], indirect=True)
def test_it_wipes_every_secret_at_destroy_when_no_identity_is_kept(stack: Stack) -> None:
    rid = stack.create_server()
    stack.act(rid, "destroy")
    row = _row(stack, rid)
    assert (row.status, row.secrets_enc, row.ovpn_file_enc, row.root_password_enc) == ("Destroyed", None, None, None)


@pytest.mark.parametrize("stack", [{"products": {"1": {"plan": "vc9-does-not-exist"}}}], indirect=True)
def test_it_stops_for_a_human_on_an_unknown_plan(stack: Stack) -> None:
    rid = stack.create_server()
    row = _row(stack, rid)
    assert row.status == "Error" and row.needs_human
    assert "Vultr refused" in (row.last_error or "")
    assert _ours(stack)[0] == []


def test_it_rides_out_transient_provider_faults(stack: Stack) -> None:
    stack.sandbox.set_faults({"seed": 3, "faults": {
        "GET /v2/instances/{id}": {"error_first": 1, "error_status": 503},
        # A create refused with 429 certainly did not happen: the step is retried, and lists nothing.
        "POST /v2/instances": {"rate_limit_first": 1, "retry_after": 0.05},
        "POST /client/v4/zones/{zone_id}/dns_records": {"error_first": 2, "error_status": 500}}})
    rid = stack.create_server()
    row = _row(stack, rid)
    assert row.status == "Running", row.last_error
    assert len(_ours(stack)[0]) == 1
    statuses = [c["status"] for c in stack.sandbox.calls()]
    assert 429 in statuses and 503 in statuses and 500 in statuses  # the faults really happened


def test_its_logs_hold_no_secret(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rid = stack.create_server()
    row = _row(stack, rid)
    ovpn = stack.app.secret_box.open(row.ovpn_file_enc or "").decode()
    from provisioner.steps import ServerSecrets

    secrets = ServerSecrets.open(stack.app.secret_box, row.secrets_enc or "")
    text = caplog.text
    needles = [stack.app.settings.vultr.api_key, stack.app.settings.cloudflare.api_token,
               stack.app.secret_box.open(row.root_password_enc or "").decode(),
               *stack.app.settings.secrets.fernet_keys, "BEGIN OPENSSH PRIVATE KEY", "PRIVATE KEY-----"]
    needles += [line for line in secrets.host_private.splitlines()[1:3]]
    needles += [line for line in ovpn.splitlines() if len(line) > 40][:20]
    for needle in needles:
        assert needle not in text


def test_a_step_longer_than_the_lease_keeps_the_row_from_a_second_worker(stack: Stack) -> None:
    """The install outlasts the 2 s lease: the first worker's heartbeat keeps the claim, so a
    second worker finds the row busy and the install runs once, not twice in parallel."""
    import threading
    import time

    from provisioner.lifecycle import Outcome

    stack.hosts.install_seconds = 3 * stack.app.settings.lifecycle.lease_seconds
    first, second = stack.lifecycle("worker-1"), stack.lifecycle("worker-2")
    rid = _begin_create(stack, first)

    def installing() -> bool:
        return any("install.sh" in c for c in stack.hosts.running_commands())


    runner = threading.Thread(target=lambda: drive_until_idle(first, [rid], timeout=60))
    runner.start()
    deadline = time.monotonic() + 30
    while not installing() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert installing(), "the install never started"
    seen = []
    while installing() and time.monotonic() < deadline:   # well past the lease's end
        seen.append(second.advance(rid))
        time.sleep(0.25)
    runner.join(60)
    assert len(seen) >= 8 and set(seen) == {Outcome.BUSY}
    row = _row(stack, rid)
    with stack.app.sessions() as s:
        installs = s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid,
                                                       ServerEvent.what == "create.install",
                                                       ServerEvent.outcome == "started")).all()
    assert len(installs) == 1
    assert row.status == "Running", row.last_error


def test_an_unexpected_error_in_a_step_is_recorded_backed_off_and_handed_to_a_human(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (here: a ValueError from the install step) must not be retried hot forever."""
    from provisioner.steps import STEPS

    calls: list[int] = []

    def broken_install(ctx: object, row: Server) -> str:
        calls.append(row.id)
        raise ValueError("something no adapter maps")

    monkeypatch.setitem(STEPS["create"], "install", broken_install)
    lc = stack.lifecycle()
    rid = _begin_create(stack, lc)
    drive_until_idle(lc, [rid], timeout=30)
    row = _row(stack, rid)
    max_attempts = stack.app.settings.lifecycle.max_attempts
    assert (row.needs_human, row.status, row.attempts) == (True, "Error", max_attempts)
    assert row.last_error == "unexpected ValueError in step install (see the worker's log)"
    assert len(calls) == max_attempts


def test_an_operator_retries_a_server_that_needs_a_human_once_the_cause_is_fixed(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.cli import main
    from provisioner.steps import STEPS

    def broken_dns(ctx: object, row: Server) -> str:
        raise ValueError("a bug, since fixed")

    monkeypatch.setitem(STEPS["create"], "dns", broken_dns)
    lc = stack.lifecycle()
    rid = _begin_create(stack, lc)
    drive_until_idle(lc, [rid], timeout=30)
    assert _row(stack, rid).needs_human
    instance = _row(stack, rid).instance_id
    monkeypatch.undo()                                     # the fix is deployed

    assert main(["--config", str(stack.config_path), "retry", f"#{rid}", "--wait", "30"]) == 0
    row = _row(stack, rid)
    assert (row.status, row.needs_human, row.action) == ("Running", False, None)
    assert row.instance_id == instance                     # resumed at its step, not rebuilt from scratch
    assert [r["name"] for r in stack.state()["records"]] == [row.server_name]
    with stack.app.sessions() as s:
        retried = s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid,
                                                      ServerEvent.what == "create.retry")).one()
    assert retried.actor.startswith("operator:") and "at step dns" in retried.detail
    capsys.readouterr()
    assert main(["--config", str(stack.config_path), "retry", f"#{rid}"]) == 2
    assert "has nothing to retry (status Running)" in capsys.readouterr().err


@pytest.mark.parametrize("stack", [{"sandbox": {"boot_seconds": 60}}], indirect=True)
def test_a_poll_of_a_server_still_booting_writes_its_row_twice_and_leaves_it_unleased(stack: Stack) -> None:
    """Polling is most of a new server's advances (the boot, the snapshot): the claim, then the
    wait and the lease's release in one commit. Not a lease renewal the claim has just made
    redundant, nor a release of its own."""
    import time

    from sqlalchemy import event

    from provisioner.lifecycle import Outcome

    lc = stack.lifecycle("worker-1")
    rid = _begin_create(stack, lc)
    updates: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE PROVISIONER_SERVERS "):
            updates.append(statement)

    def gets() -> int:
        return len([c for c in stack.sandbox.calls("vultr") if c["method"] == "GET"])

    polls: list[int] = []
    event.listen(stack.app.engine, "before_cursor_execute", count)
    try:
        for _ in range(200):      # into the boot step (still booting for a minute), then due again
            before, polling = gets(), _row(stack, rid).step == "boot"
            updates.clear()
            assert lc.advance(rid) is Outcome.WAITING
            row = _row(stack, rid)
            assert row.lease_owner is None and row.lease_until is None
            if polling and row.step == "boot" and gets() > before:
                polls.append(len(updates))
                if len(polls) == 3:
                    break
            wait = (row.next_attempt_at - stack.app.clock()).total_seconds() if row.next_attempt_at else 0.0
            time.sleep(max(0.0, wait) + 0.01)
    finally:
        event.remove(stack.app.engine, "before_cursor_execute", count)
    assert polls == [2, 2, 2]


def test_a_step_that_follows_at_once_records_its_intent_in_the_commit_of_the_step_before(stack: Stack) -> None:
    """The first advance of a create runs ``prepare`` and ``instance`` back to back. Each step's
    "started" is committed before its side effect, but only the first one needs a commit of its
    own: ``instance``'s rides with ``prepare``'s "ok" (a commit is most of a step's database CPU)."""
    from sqlalchemy import event

    from provisioner.lifecycle import Outcome

    lc = stack.lifecycle("worker-1")
    rid = _begin_create(stack, lc)
    current: list[str] = []
    committed: list[list[str]] = []

    def statement(conn: object, cursor: object, text: str, *args: object) -> None:
        current.append(" ".join(text.split()[:3]).upper())

    def commit(conn: object) -> None:
        committed.append(current[:])
        current.clear()

    event.listen(stack.app.engine, "before_cursor_execute", statement)
    event.listen(stack.app.engine, "commit", commit)
    try:
        assert lc.advance(rid) is Outcome.WAITING      # prepare, instance, then the boot's first wait
    finally:
        event.remove(stack.app.engine, "before_cursor_execute", statement)
        event.remove(stack.app.engine, "commit", commit)
    with stack.app.sessions() as s:
        events = [(e.what, e.outcome) for e in s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid)
                                                        .order_by(ServerEvent.id))]
    assert [e for e in events if e[0] != "create.requested"][:4] == [
        ("create.prepare", "started"), ("create.prepare", "ok"), ("create.instance", "started"),
        ("create.instance", "ok")], events
    intent_alone = [c for c in committed if c == ["INSERT INTO PROVISIONER_SERVER_EVENTS"]]
    assert len(intent_alone) == 1, committed     # prepare's; instance's shared prepare's "ok" commit
