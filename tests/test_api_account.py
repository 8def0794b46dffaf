"""The customer's account, their server's history in plain words, and its daily data use."""

from __future__ import annotations

import datetime as dt

from provisioner import history
from provisioner.models import BandwidthDay, ServerEvent, Status, SubscriptionStanding
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, STOREFRONT, T0, ApiEnv

DAY = dt.timedelta(days=1)


def stand(env: ApiEnv, sub: str, status: str, *, renews: bool, paid: dt.datetime, until: dt.datetime) -> None:
    with env.app.sessions() as s:
        s.add(SubscriptionStanding(subscription_id=sub, status=status, renews=renews, paid_through=paid,
                                   entitled_until=until, seen_at=T0))
        s.commit()


def event(env: ApiEnv, short: str, what: str, outcome: str, detail: str, actor: str = "worker",
          at: dt.datetime | None = None) -> None:
    with env.app.sessions() as s:
        s.add(ServerEvent(server_id=env.row(short).id, at=at or env.clock.now, actor=actor, what=what,
                          outcome=outcome, detail=detail))
        s.commit()


# --- account ------------------------------------------------------------------------------------

def test_it_says_who_is_signed_in_and_where_each_plan_stands(api_env: ApiEnv, owner: dict[str, str]) -> None:
    stand(api_env, "sub-1", "active", renews=True, paid=T0 + 20 * DAY, until=T0 + 20 * DAY)
    stand(api_env, "sub-2", "failing", renews=False, paid=T0 - DAY, until=T0 + 2 * DAY)
    r = api_env.client.get("/api/account", headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["email"], body["timezone"], body["store_url"]) == (OWNER, "America/New_York",
                                                                   f"{STOREFRONT}/pricing")
    assert body["plans"] == [
        {"server": "g0001.vpn.example.test", "plan": "The VPS VPN", "standing": "renews",
         "date": "2025-04-01T15:30:00Z"},
        {"server": "g0002.vpn.example.test", "plan": "The VPS VPN", "standing": "grace",
         "date": "2025-03-14T15:30:00Z"}]
    assert body["ended"] == []


def test_it_tells_a_lapsed_customer_when_and_why_their_server_ended(api_env: ApiEnv, owner: dict[str, str]) -> None:
    for short in ("g0001", "g0002"):
        api_env.set(short, status=Status.DESTROYED.value, action=None, step=None, destroyed_at=T0 - DAY)
    stand(api_env, "sub-1", "cancelled", renews=False, paid=T0 - 2 * DAY, until=T0 - 2 * DAY)
    event(api_env, "g0002", "destroy.requested", "info", "requested by an operator", actor="operator:sam")
    body = api_env.client.get("/api/account", headers=owner).json()
    assert body["plans"] == []
    assert [(e["server"], e["reason"], e["ended_at"]) for e in body["ended"]] == [
        ("g0001.vpn.example.test", "cancelled", "2025-03-11T15:30:00Z"),
        ("g0002.vpn.example.test", "support", "2025-03-11T15:30:00Z")]
    assert api_env.client.get("/api/servers", headers=owner).json() == []


# --- history ------------------------------------------------------------------------------------

def test_it_tells_the_servers_history_in_plain_words_newest_first(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.clock.advance(60)
    event(api_env, "g0001", "rebuild.requested", "info", "to ams, weekly schedule", actor="scheduler")
    event(api_env, "g0001", "rebuild.instance", "started", "")             # operators' detail, left out
    event(api_env, "g0001", "rebuild.instance", "failed", "attempt 1: vultr 503; retrying in 30s")
    event(api_env, "g0001", "rebuild.dns", "ok", "g0001 → 1.2.3.4; " + history.moved("ewr", "ams"))
    event(api_env, "g0001", "root_password.viewed", "info", "", actor="operator:sam")
    assert api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Phone"}).status_code == 201
    assert api_env.client.delete("/api/servers/g0001/devices/2", headers=owner).status_code == 200
    r = api_env.client.get("/api/servers/g0001/history", headers=owner)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["text"] for i in items] == [
        "Device 'Phone' revoked", "Device 'Phone' added", "Root password viewed (by support)",
        "Moved from New Jersey to Amsterdam", "Scheduled weekly rebuild (Amsterdam)"]
    assert [(i["kind"], i["by"]) for i in items][:4] == [("device_revoked", "you"), ("device_added", "you"),
                                                         ("password_viewed", "support"), ("moved", "system")]
    assert items[3]["params"] == {"from": "ewr", "to": "ams"}
    assert r.json()["next_before"] is None


def test_it_pages_the_history(api_env: ApiEnv) -> None:
    for i in range(25):
        api_env.clock.advance(60)
        event(api_env, "g0001", "schedule.changed", "info", f"none/random -> {['daily', 'weekly'][i % 2]}/fra",
              actor="customer")
    owner = api_env.headers()
    first = api_env.client.get("/api/servers/g0001/history?limit=10", headers=owner).json()
    assert len(first["items"]) == 10 and first["next_before"] == first["items"][-1]["id"]
    seen = [i["id"] for i in first["items"]]
    cursor = first["next_before"]
    while cursor:
        more = api_env.client.get(f"/api/servers/g0001/history?limit=10&before={cursor}", headers=owner).json()
        seen += [i["id"] for i in more["items"]]
        cursor = more["next_before"]
    assert len(seen) == 25 and seen == sorted(seen, reverse=True) and len(set(seen)) == 25
    assert first["items"][0]["text"] == "Rebuild schedule set to daily (Frankfurt)"
    bad = api_env.client.get("/api/servers/g0001/history?limit=1000", headers=owner)
    assert bad.status_code == 422


def test_another_customers_history_is_not_found(api_env: ApiEnv, another_customer: dict[str, str]) -> None:
    assert api_env.client.get("/api/servers/g0001/history", headers=another_customer).status_code == 404


# --- usage --------------------------------------------------------------------------------------

def test_it_gives_every_day_of_the_month_so_far_summed_over_the_servers_instances(
        api_env: ApiEnv, owner: dict[str, str]) -> None:
    sid = api_env.row("g0001").id
    with api_env.app.sessions() as s:
        s.add_all([BandwidthDay(server_id=sid, instance_id="old", day=dt.date(2025, 3, 2), bytes=5_000),
                   BandwidthDay(server_id=sid, instance_id="old", day=dt.date(2025, 3, 10), bytes=1_000),
                   BandwidthDay(server_id=sid, instance_id="new", day=dt.date(2025, 3, 10), bytes=2_000),
                   BandwidthDay(server_id=sid, instance_id="old", day=dt.date(2025, 2, 28), bytes=9_999)])
        s.commit()
    api_env.set("g0001", bandwidth_month="2025-03")
    body = api_env.client.get("/api/servers/g0001/usage", headers=owner).json()
    assert (body["month"], body["used"], body["cap"]) == ("2025-03", 123_000_000_000, 1_000_000_000_000)
    days = {d["day"]: d["bytes"] for d in body["days"]}
    assert list(days) == [f"2025-03-{n:02d}" for n in range(1, 13)]
    assert (days["2025-03-02"], days["2025-03-10"], days["2025-03-01"]) == (5_000, 3_000, 0)
