"""What the owner sees and does: the server list, rebuild now, the schedule, the .ovpn."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from provisioner.models import Status
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OVPN, OWNER, REGIONS, STOREFRONT, ApiEnv, build_env


def _servers(env: ApiEnv, headers: dict[str, str]) -> dict[str, dict]:
    r = env.client.get("/api/servers", headers=headers)
    assert r.status_code == 200, r.text
    return {s["short_name"]: s for s in r.json()}


# --- listing -----------------------------------------------------------------------------------

def test_it_lists_the_owners_servers_with_what_the_dashboard_shows(api_env: ApiEnv, owner: dict[str, str]) -> None:
    servers = _servers(api_env, owner)
    g1, g2 = servers["g0001"], servers["g0002"]
    assert g1["name"] == g1["dns_name"] == "g0001.vpn.example.test"
    assert (g1["status"], g1["busy"], g1["ip"], g1["location"], g1["city"]) == (
        "Running", False, "127.77.0.10", "ewr", "New Jersey")
    assert (g1["bandwidth_used"], g1["bandwidth_cap"]) == (123_000_000_000, 1_000_000_000_000)
    assert g1["last_rebuilt"] == "2025-03-10T15:30:00Z"
    assert g1["ovpn_available"] is True and g1["regions"] == REGIONS
    assert g1["events"] == [{"at": "2025-03-10T15:30:00Z", "what": "create.finish", "outcome": "ok"}]
    assert (g2["status"], g2["step"], g2["progress"], g2["busy"]) == ("Installing", "install", "Installing the VPN",
                                                                      True)
    assert g2["ovpn_available"] is False and g2["ip"] is None


def test_it_leaves_destroyed_servers_out(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.add_server(OWNER, "g0009", status=Status.DESTROYED.value)
    assert "g0009" not in _servers(api_env, owner)


def test_it_shows_the_next_scheduled_rebuild_in_utc(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.set("g0001", rebuild_schedule="weekly", rebuild_schedule_location="ams")
    g1 = _servers(api_env, owner)["g0001"]
    # T0 is Wednesday 2025-03-12; the next Sunday midnight in New York is 04:00 UTC (EDT)
    assert g1["next_scheduled_rebuild"] == "2025-03-16T04:00:00Z"
    assert (g1["schedule"], g1["schedule_location"]) == ("weekly", "ams")


def test_it_shows_schedule_times_in_the_workers_time_zone(tmp_path: Path, api_db_template: Path,
                                                         owner: dict[str, str]) -> None:
    # Given a shop whose worker runs its clock in Berlin, not New York
    (tmp_path / "berlin").mkdir()
    env = build_env(tmp_path / "berlin", template=api_db_template, sections={"worker": {"timezone": "Europe/Berlin"}})
    env.add_server(OWNER, "g0001", rebuild_schedule="weekly", rebuild_schedule_location="ams")
    g1 = _servers(env, owner)["g0001"]
    # Then the next weekly slot is Sunday midnight in Berlin (CET = UTC+1), as the worker will run it
    assert g1["next_scheduled_rebuild"] == "2025-03-15T23:00:00Z"


def test_it_explains_errors_in_human_text_without_the_operators_details(api_env: ApiEnv,
                                                                          owner: dict[str, str]) -> None:
    api_env.set("g0001", status=Status.ERROR.value, last_error="vultr: 500 on POST /instances (id 7f3a...)")
    g1 = _servers(api_env, owner)["g0001"]
    assert g1["last_error_code"] == "retrying" and "retrying automatically" in g1["last_error"]
    assert "vultr" not in g1["last_error"]
    # stopped for a human: "alerted" only when an alert really was queued to an operator channel
    api_env.set("g0001", needs_human=True, action="create", step="install")
    assert _servers(api_env, owner)["g0001"]["last_error_code"] == "stopped"
    api_env.set("g0001", human_alerted_at=api_env.clock.now)
    g1 = _servers(api_env, owner)["g0001"]
    assert g1["last_error_code"] == "needs_attention" and "our team has been alerted" in g1["last_error"]
    assert _servers(api_env, owner)["g0002"]["last_error"] is None


def test_a_delayed_rebuild_says_the_vpn_keeps_working(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.set("g0001", status=Status.ERROR.value, action="rebuild", step="install", old_instance_id="old-1")
    g1 = _servers(api_env, owner)["g0001"]
    assert g1["last_error_code"] == "rebuild_delayed" and "keeps working" in g1["last_error"]
    assert "alerted" not in g1["last_error"]
    api_env.set("g0001", needs_human=True, human_alerted_at=api_env.clock.now)
    g1 = _servers(api_env, owner)["g0001"]
    assert g1["last_error_code"] == "rebuild_delayed_alerted" and "keeps working" in g1["last_error"]


def test_it_keeps_only_the_last_ten_events_newest_first(api_env: ApiEnv) -> None:
    for i in range(12):
        api_env.clock.advance(3600)
        r = api_env.client.put("/api/servers/g0001/schedule", headers=api_env.headers(),
                               json={"schedule": ["daily", "weekly"][i % 2], "location": "random"})
        assert r.status_code == 200
    events = _servers(api_env, api_env.headers())["g0001"]["events"]
    assert len(events) == 10
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert events[0]["what"] == "schedule.changed"


def test_it_lists_the_locations_of_the_callers_plans_with_cities(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.get("/api/locations", headers=owner)
    assert [loc["id"] for loc in r.json()] == REGIONS
    assert {"id": "nrt", "city": "Tokyo", "country": "JP"} in r.json()


def test_it_serves_the_page_config_without_a_token(api_env: ApiEnv) -> None:
    r = api_env.client.get("/api/config")
    assert r.json() == {"storefront_url": f"{STOREFRONT}/pricing", "languages": ["en", "de", "fr"],
                        "refresh_seconds": 15, "schedules": ["none", "daily", "weekly", "monthly"]}


# --- rebuild -------------------------------------------------------------------------------------

def test_it_records_a_rebuild_request_then_409_while_busy_then_429_in_the_cooldown(
        api_env: ApiEnv, owner: dict[str, str]) -> None:
    # When the owner asks for a rebuild in Amsterdam
    r = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "ams"})

    # Then it is recorded on the row for the worker, with an event, and the server is busy
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "accepted" and r.json()["server"]["busy"] is True
    row = api_env.row("g0001")
    assert (row.rebuild_now_status, row.rebuild_now_location, row.rebuild_requested_at) == (True, "ams",
                                                                                            api_env.clock.now)
    assert row.status == "Running" and row.action is None          # the worker, not the API, rebuilds
    last = api_env.events("g0001")[-1]
    assert (last.actor, last.what, last.outcome) == ("customer", "rebuild.requested", "info")
    listed = _servers(api_env, owner)["g0001"]
    assert (listed["rebuild_requested"], listed["rebuild_location"], listed["progress"]) == (
        True, "ams", "Rebuild requested")

    # And asking again while it is pending is a conflict
    again = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "random"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "busy"

    # When the worker has done it, a new request inside the cooldown is rate limited
    api_env.set("g0001", rebuild_now_status=False, rebuild_now_location=None)
    api_env.clock.advance(100)
    soon = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "random"})
    assert soon.status_code == 429 and soon.json()["error"]["code"] == "rebuild_cooldown"
    assert soon.headers["retry-after"] == "200"

    # And after the cooldown it is accepted again
    api_env.clock.advance(200)
    later = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "random"})
    assert later.status_code == 202
    assert api_env.row("g0001").rebuild_now_location == "random"


@pytest.mark.parametrize(("columns", "why"), [
    ({"action": "rebuild", "step": "boot", "status": Status.REBUILDING.value}, "busy"),
    ({"status": Status.INSTALLING.value}, "not running"),
    ({"status": Status.SUSPENDED.value}, "suspended"),
    ({"status": Status.QUEUED.value}, "queued"),
])
def test_it_refuses_a_rebuild_while_the_server_is_busy(api_env: ApiEnv, owner: dict[str, str],
                                                       columns: dict, why: str) -> None:
    api_env.set("g0001", **columns)
    r = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "ams"})
    assert r.status_code == 409, why
    assert api_env.row("g0001").rebuild_now_status is False


def test_it_allows_a_rebuild_of_a_server_in_error(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.set("g0001", status=Status.ERROR.value)
    assert api_env.client.post("/api/servers/g0001/rebuild", headers=owner,
                               json={"location": "random"}).status_code == 202


def test_it_names_the_allowed_regions_when_the_location_is_not_offered(api_env: ApiEnv,
                                                                       owner: dict[str, str]) -> None:
    r = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "waw"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_location"
    assert "ewr, lax, ord, ams, fra, lhr, cdg, nrt, sgp, syd, random" in r.json()["error"]["message"]
    assert api_env.row("g0001").rebuild_now_status is False


def test_it_answers_409_when_the_worker_changed_the_row_meanwhile(api_env: ApiEnv, owner: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the worker bumps the row between the API's read and its write
    from provisioner import customer

    real = customer.busy_reason

    def racing(row):  # noqa: ANN001, ANN202
        api_env.set("g0001", bandwidth_this_month=1)
        return real(row)

    monkeypatch.setattr(customer, "busy_reason", racing)
    r = api_env.client.post("/api/servers/g0001/rebuild", headers=owner, json={"location": "ams"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert api_env.row("g0001").rebuild_now_status is False


# --- schedule ------------------------------------------------------------------------------------

def test_it_saves_the_schedule_and_records_an_event(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.put("/api/servers/g0001/schedule", headers=owner, json={"schedule": "monthly",
                                                                                "location": "nrt"})
    assert r.status_code == 200, r.text
    assert (r.json()["schedule"], r.json()["schedule_location"]) == ("monthly", "nrt")
    assert r.json()["next_scheduled_rebuild"] == "2025-04-01T04:00:00Z"
    row = api_env.row("g0001")
    assert (row.rebuild_schedule, row.rebuild_schedule_location) == ("monthly", "nrt")
    # the slot that began before the customer chose "monthly" is not caught up
    assert row.schedule_slot_done == dt.datetime(2025, 3, 1, 5, 0, tzinfo=dt.UTC)
    last = api_env.events("g0001")[-1]
    assert (last.actor, last.what, last.detail) == ("customer", "schedule.changed", "none/random -> monthly/nrt")


def test_it_writes_nothing_when_the_schedule_is_unchanged(api_env: ApiEnv, owner: dict[str, str]) -> None:
    version, events = api_env.row("g0001").version, len(api_env.events("g0001"))
    r = api_env.client.put("/api/servers/g0001/schedule", headers=owner, json={"schedule": "none",
                                                                                "location": "random"})
    assert r.status_code == 200
    assert (api_env.row("g0001").version, len(api_env.events("g0001"))) == (version, events)


def test_it_saves_a_schedule_even_while_the_server_is_busy(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.put("/api/servers/g0002/schedule", headers=owner, json={"schedule": "daily",
                                                                                "location": "random"})
    assert r.status_code == 200 and api_env.row("g0002").rebuild_schedule == "daily"


@pytest.mark.parametrize("body", [
    {"schedule": "hourly", "location": "random"},
    {"schedule": "Daily", "location": "random"},
    {"schedule": "daily", "location": "waw"},
    {"schedule": "daily"},
    {"location": "random"},
    {"schedule": None, "location": "random"},
    {"schedule": "daily", "location": "random", "when": "now"},
    {"schedule": ["daily"], "location": "random"},
    {"schedule": "daily", "location": ""},
])
def test_it_rejects_bad_schedules_and_changes_nothing(api_env: ApiEnv, owner: dict[str, str], body: dict) -> None:
    before = api_env.row("g0001")
    r = api_env.client.put("/api/servers/g0001/schedule", headers=owner, json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["message"]
    after = api_env.row("g0001")
    assert (after.rebuild_schedule, after.rebuild_schedule_location, after.version) == (
        before.rebuild_schedule, before.rebuild_schedule_location, before.version)


# --- .ovpn ---------------------------------------------------------------------------------------

def test_it_downloads_the_decrypted_ovpn(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.get("/api/servers/g0001/ovpn", headers=owner)
    assert r.status_code == 200
    assert r.content == OVPN == api_env.app.secret_box.open(api_env.row("g0001").ovpn_file_enc or "")
    assert r.headers["content-disposition"] == 'attachment; filename="g0001.ovpn"'
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/x-openvpn-profile"


def test_it_answers_409_while_the_ovpn_is_not_made_yet(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.get("/api/servers/g0002/ovpn", headers=owner)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"


def test_it_answers_503_not_500_when_the_ovpn_cannot_be_decrypted(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.set("g0001", ovpn_file_enc="gAAAAAB-not-a-valid-token")
    r = api_env.client.get("/api/servers/g0001/ovpn", headers=owner)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
