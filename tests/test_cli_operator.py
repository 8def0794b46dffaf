"""The operator's tools against the sandbox: find servers, pause and resume, recover in bulk,
take a paid server down and bring it back with the same .ovpn; bad input changes nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dashboard_api.server import create_app
from dashboard_api.tokens import mint_token
from jobs.driver import drive_until_idle
from jobs.server_check import server_check
from provisioner import operations
from provisioner.cli import main
from provisioner.models import IpHolding, OutboxMessage, Server, ServerEvent
from tests.fixtures.stack import Stack, wait_until


def cli(stack: Stack, capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["--config", str(stack.config_path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result: tuple[int, str, str], needle: str) -> None:
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("provisioner: error: "), err
    assert needle in lines[0], lines[0]


def snapshot(stack: Stack) -> dict[str, Any]:
    """Everything an operator command could change."""
    with stack.app.sessions() as s:
        rows = [(r.id, r.status, r.action, r.step, r.paused, r.operator_hold_at, r.needs_human, r.version,
                 r.instance_id) for r in s.scalars(select(Server).order_by(Server.id))]
        events = s.scalar(select(func.count()).select_from(ServerEvent))
        holdings = s.scalar(select(func.count()).select_from(IpHolding))
    return {"rows": rows, "events": events, "holdings": holdings, "instances": len(stack.live_instances())}


def row_of(stack: Stack, rid: int) -> Server:
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        return row


def events_of(stack: Stack, rid: int) -> list[ServerEvent]:
    with stack.app.sessions() as s:
        return list(s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid).order_by(ServerEvent.id)))


def fail_creates(stack: Stack, count: int) -> None:
    """The next ``count`` instance creations are refused outright (a human must look)."""
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": count, "error_status": 400}}})


def needs_human_server(stack: Stack, sub_id: int, email: str) -> int:
    fail_creates(stack, 1)
    rid = stack.create_server(sub_id, email)
    assert row_of(stack, rid).needs_human
    return rid


ANN = 41   # ann's WordPress account: the dashboard shows an account's servers (a guest sees none)


def customer_view(stack: Stack, email: str) -> dict[str, dict[str, Any]]:
    from provisioner.cli.common import account_of

    with TestClient(create_app(stack.app)) as client:
        token = mint_token(stack.app.settings, email, account_of(stack.app, email), ttl_seconds=600)
        reply = client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200, reply.text
        return {s["short_name"]: s for s in reply.json()}


# --- servers: find ----------------------------------------------------------------------------

def test_it_finds_servers_by_customer_status_location_and_need(stack: Stack, capsys: pytest.CaptureFixture[str]) \
        -> None:
    ann = stack.create_server(1, "ann@example.com", user_id=ANN)
    bob = needs_human_server(stack, 2, "bob@example.com")

    code, out, _ = cli(stack, capsys, "servers", "--needs-human")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "NOTE" in lines[0]
    assert lines[1].startswith(row_of(stack, bob).server_name or "") and "NEEDS A HUMAN: " in lines[1]
    assert "400" in lines[1]  # the reason: Vultr's refusal

    listed = json.loads(cli(stack, capsys, "servers", "--customer", "ANN@example.com", "--json")[1])
    assert [s["id"] for s in listed] == [ann] and listed[0]["needs_human"] is False and listed[0]["note"] == ""
    assert [s["id"] for s in json.loads(cli(stack, capsys, "servers", "--customer", "2", "--json")[1])] == [bob]
    assert [s["id"] for s in json.loads(cli(stack, capsys, "servers", "--status", "running", "--json")[1])] == [ann]
    assert [s["id"] for s in json.loads(cli(stack, capsys, "servers", "--location", "ewr", "--json")[1])] == [ann]
    both = json.loads(cli(stack, capsys, "servers", "--json")[1])
    assert [s["needs_human"] for s in both] == [False, True]
    code, out, _ = cli(stack, capsys, "servers", "--status", "Rebuilding")
    assert (code, out.strip()) == (0, "no servers match")


@pytest.mark.parametrize(("args", "needle"), [
    (("--status", "Sleeping"), "--status: 'Sleeping' is not a status"),
    (("--customer", "nobody@example.com"), "--customer: no server belongs to 'nobody@example.com'"),
    (("--location", "xyz"), "--location: 'xyz' is not a region"),
])
def test_it_refuses_a_bad_filter_in_one_line(stack: Stack, capsys: pytest.CaptureFixture[str],
                                             args: tuple[str, ...], needle: str) -> None:
    stack.create_server(1, "ann@example.com", user_id=ANN)
    before = snapshot(stack)
    one_line_error(cli(stack, capsys, "servers", *args), needle)
    assert snapshot(stack) == before


# --- pause / resume -----------------------------------------------------------------------------

def test_it_pauses_a_server_so_nothing_works_on_it_until_resumed(stack: Stack,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Given a server in the middle of its create
    stack.add_subscription(1, "ann@example.com", user_id=ANN)
    lc = stack.lifecycle()
    sub = stack.app.find_subscription("1")
    assert sub is not None
    with stack.app.sessions() as s:
        rid = lc.begin_create(s, sub).id
        s.commit()
    # When an operator pauses it
    code, out, _ = cli(stack, capsys, "pause", f"#{rid}", "--reason", "checking a report")
    assert code == 0 and "paused by an operator" in out
    # Then no worker and no pass touches it: the create stays where it was
    assert operations.drive(lc, [rid]) == {rid: operations.Outcome.BUSY}
    server_check(stack.app, lc)
    assert (row_of(stack, rid).step, stack.live_instances()) == ("prepare", [])
    # and the customer reads that support holds it, and cannot ask for a rebuild
    (view,) = customer_view(stack, "ann@example.com").values()
    assert (view["support_hold"], view["progress"], view["busy"]) == ("paused", "Paused by support", True)
    # When it is resumed, the create goes on to the end
    code, _, _ = cli(stack, capsys, "resume", f"#{rid}")
    assert code == 0
    drive_until_idle(lc, [rid], timeout=60)
    row = row_of(stack, rid)
    assert row.status == "Running" and not row.paused
    trail = [(e.what, e.actor.split(":")[0], e.detail) for e in events_of(stack, rid) if e.what.startswith("operator")]
    assert trail[0] == ("operator.paused", "operator", "checking a report")
    assert trail[1][:2] == ("operator.resumed", "operator")


def test_it_refuses_a_running_customers_rebuild_while_paused(stack: Stack,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rid = stack.create_server(1, "ann@example.com", user_id=ANN)
    cli(stack, capsys, "pause", f"#{rid}")
    name = row_of(stack, rid).server_name or ""
    with TestClient(create_app(stack.app)) as client:
        token = mint_token(stack.app.settings, "ann@example.com", ANN, ttl_seconds=600)
        reply = client.post(f"/api/servers/{name}/rebuild", json={"location": "ams"},
                            headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "support_hold"
    one_line_error(cli(stack, capsys, "rebuild", f"#{rid}", "--location", "ams"), "is paused")


@pytest.mark.parametrize(("args", "needle"), [
    (("pause", "g0999"), "no server named 'g0999'"),
    (("pause", "#1"), "is already paused"),
    (("resume", "g0999"), "no server named 'g0999'"),
    (("release", "#1"), "is not held by an operator"),
    (("release", "g0999"), "no server named 'g0999'"),
])
def test_it_refuses_bad_hold_commands_in_one_line(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                  args: tuple[str, ...], needle: str) -> None:
    stack.create_server(1, "ann@example.com", user_id=ANN)
    cli(stack, capsys, "pause", "#1")
    before = snapshot(stack)
    one_line_error(cli(stack, capsys, *args), needle)
    assert snapshot(stack) == before


def test_it_refuses_to_resume_a_server_that_is_not_paused(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.create_server(1, "ann@example.com", user_id=ANN)
    before = snapshot(stack)
    one_line_error(cli(stack, capsys, "resume", "#1"), "is not paused")
    assert snapshot(stack) == before


# --- retry --all-needing-human -----------------------------------------------------------------

def test_it_retries_every_server_needing_a_human_after_confirming_their_number(
        stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two servers Vultr refused to create, and the cause fixed
    ann = needs_human_server(stack, 1, "ann@example.com")
    bob = needs_human_server(stack, 2, "bob@example.com")
    stack.sandbox.clear_faults()
    # When the operator retries them all and types their number
    code, out, err = cli(stack, capsys, "retry", "--all-needing-human", "--wait", "60", stdin="2\n",
                         monkeypatch=monkeypatch)
    # Then both were listed, confirmed, retried at their step and are Running
    assert code == 0, err
    assert "Type 2 to confirm" in out and "retrying 2 server(s)" in out
    for rid in (ann, bob):
        row = row_of(stack, rid)
        assert (row.status, row.needs_human) == ("Running", False), row.last_error
        (retry,) = [e for e in events_of(stack, rid) if e.what == "create.retry"]
        assert retry.actor.startswith("operator:") and "one of 2 retried at once" in retry.detail


def test_it_retries_only_those_given_up_on_since_a_time(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    ann = needs_human_server(stack, 1, "ann@example.com")
    between = stack.app.clock()
    bob = needs_human_server(stack, 2, "bob@example.com")
    stack.sandbox.clear_faults()
    code, out, _ = cli(stack, capsys, "retry", "--all-needing-human", "--since", between.isoformat(), "--yes",
                       "--wait", "60")
    assert code == 0 and "retrying 1 server(s)" in out
    assert row_of(stack, ann).needs_human and row_of(stack, bob).status == "Running"


@pytest.mark.parametrize(("args", "stdin", "needle"), [
    (("retry", "--all-needing-human"), "3\n", "not confirmed (expected 1, got '3'); nothing retried"),
    (("retry", "--all-needing-human"), "", "not confirmed (expected 1, got ''); nothing retried"),
    (("retry", "--all-needing-human", "--since", "2999-01-01T00:00Z"), "1\n", "no server needs a human since"),
    (("retry", "--all-needing-human", "--since", "the 3rd at two"), "1\n", "--since: 'the 3rd at two' is not a time"),
    (("retry",), "", "name one server to retry, or pass --all-needing-human"),
    (("retry", "#1", "--all-needing-human"), "", "name one server to retry, or pass --all-needing-human"),
    (("retry", "#1", "--since", "2h"), "", "--since goes with --all-needing-human"),
    (("retry", "g0999"), "", "no server named 'g0999'"),
])
def test_it_refuses_a_bad_retry_in_one_line_and_retries_nothing(
        stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        args: tuple[str, ...], stdin: str, needle: str) -> None:
    needs_human_server(stack, 1, "ann@example.com")
    stack.sandbox.clear_faults()
    before = snapshot(stack)
    one_line_error(cli(stack, capsys, *args, stdin=stdin, monkeypatch=monkeypatch), needle)
    assert snapshot(stack) == before


# --- destroy --force / release -------------------------------------------------------------------

def test_a_forced_destroy_stays_down_across_ticks_and_release_brings_back_the_same_ovpn(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    rid = stack.create_server(1, "ann@example.com", user_id=ANN)
    before = row_of(stack, rid)
    ovpn = stack.app.secret_box.open(before.ovpn_file_enc or "")
    name = (before.server_name or "").split(".")[0]

    # A paid server is not destroyed by a plain `destroy` (the planner would build it again)
    unchanged = snapshot(stack)
    one_line_error(cli(stack, capsys, "destroy", name), "still entitles it")
    one_line_error(cli(stack, capsys, "destroy", name, "--force"), "--force needs --reason")
    assert snapshot(stack) == unchanged

    # Forced, with a reason: it goes down, the operator's hold is recorded, the PKI is kept
    code, out, _ = cli(stack, capsys, "destroy", name, "--force", "--reason", "abuse report 4711", "--wait", "60")
    assert code == 0 and "held by an operator" in out
    held = row_of(stack, rid)
    assert held.status == "Destroyed" and held.operator_hold_reason == "abuse report 4711"
    with stack.app.sessions() as s:  # no "your subscription has ended" mail: it has not
        assert "server_destroyed" not in set(s.scalars(select(OutboxMessage.kind)))
    assert held.secrets_enc and held.ovpn_file_enc is None and held.root_password_enc is None
    assert stack.live_instances() == []

    # Across ticks the planner does not build it again, and says why
    lc = stack.lifecycle()
    for _ in range(3):
        report = server_check(stack.app, lc)
        drive_until_idle(lc, timeout=30)
        assert report.plan is not None and report.plan.build == []
        assert any(f"`provisioner release {held.server_name}`" in h["reason"] for h in report.plan.held)
    assert (row_of(stack, rid).status, stack.live_instances()) == ("Destroyed", [])
    code, out, _ = cli(stack, capsys, "check", "--json")
    assert json.loads(out)["build"] == []

    # The customer reads "suspended by support" and cannot download the .ovpn
    view = customer_view(stack, "ann@example.com")[name]
    assert (view["status"], view["support_hold"], view["progress"]) == ("Suspended", "suspended",
                                                                        "Suspended by support")
    assert view["ovpn_available"] is False and view["ip"] is None
    one_line_error(cli(stack, capsys, "destroy", name, "--force", "--reason", "again"), "already held")

    # Released: built again, same name, same PKI, so the very same .ovpn
    code, out, _ = cli(stack, capsys, "release", name, "--wait", "60")
    assert code == 0, out
    after = row_of(stack, rid)
    assert (after.status, after.server_name, after.operator_hold_at) == ("Running", before.server_name, None)
    assert after.instance_id != before.instance_id
    assert stack.app.secret_box.open(after.ovpn_file_enc or "") == ovpn
    trail = [(e.what, e.actor.split(":")[0]) for e in events_of(stack, rid) if e.what.startswith("operator.")]
    assert trail == [("operator.held", "operator"), ("operator.released", "operator")]
    view = customer_view(stack, "ann@example.com")[name]
    assert (view["status"], view["support_hold"], view["ovpn_available"]) == ("Running", None, True)


def test_a_release_after_the_subscription_ended_wipes_the_kept_pki(stack: Stack,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rid = stack.create_server(1, "ann@example.com", user_id=ANN)
    cli(stack, capsys, "destroy", "#1", "--force", "--reason", "chargeback", "--wait", "60")
    stack.set_subscription(1, status="expired", days=-10)
    code, _, _ = cli(stack, capsys, "release", "#1")
    row = row_of(stack, rid)
    assert code == 0 and (row.status, row.secrets_enc, row.operator_hold_at) == ("Destroyed", None, None)


def test_a_plain_destroy_of_an_ended_subscriptions_server_needs_no_force(stack: Stack,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rid = stack.create_server(1, "ann@example.com", user_id=ANN)
    stack.set_subscription(1, status="expired", days=-10)
    code, _, _ = cli(stack, capsys, "destroy", "#1", "--wait", "60")
    row = row_of(stack, rid)
    # an ended subscription: no operator's hold; the PKI is kept only for a renewal (keep_identity_days)
    assert code == 0 and (row.status, row.operator_hold_at) == ("Destroyed", None)
    assert row.identity_kept_until is not None


# --- two operator commands at once --------------------------------------------------------------

def test_two_cli_processes_never_both_work_a_row(stack: Stack) -> None:
    rid = stack.create_server(1, "ann@example.com", user_id=ANN)
    name = f"#{rid}"
    # Given one operator's rebuild, stuck in its install (the host never answers the command)
    stack.hosts.set_fault("*", "command_hang", match="install.sh")
    log_a = stack.tmp / "cli-a.log"
    first = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), "rebuild",
                              name, "--location", "ams", "--wait", "120"], cwd=stack.tmp, env=_env(),
                             stdout=log_a.open("wb"), stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: (row_of(stack, rid).step == "install"
                                   and (row_of(stack, rid).lease_owner or "").startswith("cli:")), 60), \
            log_a.read_text()
        owner_a = row_of(stack, rid).lease_owner
        # When a second operator destroys it meanwhile (another process: its own lease owner)
        second = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), "destroy",
                                 name, "--force", "--reason", "two at once"], cwd=stack.tmp, env=_env(),
                                capture_output=True, text=True, timeout=60)
        # Then it records the destroy but does not work the row the first still holds
        assert second.returncode == 0, second.stderr
        assert "Destroying" in second.stdout
        trail = events_of(stack, rid)
        assert [e.what for e in trail if e.what.startswith("destroy.") and e.outcome != "info"] == []
        assert {e.actor for e in trail if e.actor.startswith("worker:cli:")} == {f"worker:{owner_a}"}
        assert row_of(stack, rid).lease_owner == owner_a
    finally:
        # the new instance's host goes away: the first command's hung install ends at once
        stack.hosts.stop(row_of(stack, rid).instance_id or "")
        stack.hosts.clear_faults()
    # And once the first lets go (its install's write is fenced out), the destroy is carried out to the end
    assert first.wait(timeout=120) == 0, log_a.read_text()
    row = row_of(stack, rid)
    assert (row.status, row.lease_owner) == ("Destroyed", None)
    assert stack.live_instances() == []


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
