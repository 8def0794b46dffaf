"""Every input the destroy path can see, on SQLite and MariaDB: what is destroyed, what is
held (and said, once, to the operator). Nothing here destroys anything but on aged,
positive evidence from the storefront.

The shop's planner: destroy_grace_hours = 48; the breaker allows the smaller of 5 and 10 %
of the fleet (at least 1) in 24 h, unless a test says otherwise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from provisioner import holds
from tests.fixtures.shop import DAY, HOUR, Shop

GRACE = 48 * HOUR
MINUTE = dt.timedelta(minutes=1)
ROOMY = {"planner": {"max_destroy_count": 100, "max_destroy_fraction": 1.0}}


@pytest.mark.parametrize("shop_settings", [ROOMY])
def test_ending_statuses_are_destroyed_only_past_the_grace(shop: Shop, shop_settings: dict[str, Any]) -> None:
    # Given four subscriptions that ended an hour ago in each of EDD's ways, and one that runs on
    now = shop.clock.now
    shop.subscribe(1, status="expired", expires=now - HOUR)
    shop.subscribe(2, status="completed", expires=now - HOUR)
    shop.subscribe(3, status="cancelled", expires=now - HOUR)
    shop.subscribe(4, status="failing", expires=now - 3 * DAY - HOUR)   # past the 3-day failing grace too
    shop.subscribe(5, status="active")
    shop.running(1, 2, 3, 4, 5)

    # When the planner sees them for the first time, and again just inside the grace
    shop.tick()
    assert shop.destroying() == set() and shop.held() == {}
    shop.tick(after=GRACE - HOUR)
    assert shop.destroying() == set()

    # Then they go once the grace has passed, and the running one stays
    shop.tick(after=2 * HOUR)
    assert shop.destroying() == {1, 2, 3, 4}


def test_a_status_flipped_to_expired_waits_for_its_paid_through_date(shop: Shop) -> None:
    # Given a subscription expired by hand while paid for five more days
    shop.subscribe(1, status="expired", expires=shop.clock.now + 5 * DAY)
    shop.running(1)

    # When the grace after the first sighting has passed, it is still paid for: it stays
    shop.tick()
    shop.tick(after=GRACE + HOUR)
    assert shop.destroying() == set()

    # Then it goes only once the paid-through date plus the grace have passed
    shop.tick(after=5 * DAY)
    assert shop.destroying() == {1}


def test_unknown_and_recased_status_words(shop: Shop) -> None:
    # Given a status EDD never writes, re-cased known words, all with past dates except "Active"
    now = shop.clock.now
    shop.subscribe(1, status="needs_attention", expires=now - 10 * DAY)
    shop.subscribe(2, status="Active", expires=now + 10 * DAY)
    shop.subscribe(3, status="EXPIRED", expires=now - 10 * DAY)
    shop.running(1, 2, 3)

    # When the planner runs past the grace
    shop.tick()
    shop.tick(after=GRACE + HOUR)

    # Then the unknown word is held (once told to the operator), "Active" is live, "EXPIRED" ended
    assert shop.destroying() == {3}
    assert shop.held() == {1: "no_evidence"}
    [alert] = shop.alerts("destroy_held")
    assert "unknown status 'needs_attention'" in alert.body and alert.recipient == "ops@example.com"


def test_zero_and_unparsable_dates_are_held_forever(shop: Shop) -> None:
    # Given ending statuses whose expiration is MySQL's zero date or not a date at all
    shop.subscribe(1, status="cancelled", expires="0000-00-00 00:00:00")
    shop.subscribe(2, status="expired", expires="0000-00-00 00:00:00")
    shop.subscribe(3, status="cancelled", expires=shop.clock.now - DAY)
    bad = "next tuesday" if shop.app.engine.dialect.name == "sqlite" else "2026-02-30 00:00:00"
    shop.edd("UPDATE {subs} SET expiration = :bad WHERE id = 3", bad=bad)
    shop.running(1, 2, 3)

    # When the planner runs for months
    for _ in range(3):
        shop.tick(after=30 * DAY)

    # Then none of them is destroyed; each is held, and the operator is told once per server
    assert shop.destroying() == set()
    assert shop.held() == {1: "no_evidence", 2: "no_evidence", 3: "no_evidence"}
    assert sorted(int(a.payload["server"]["subscription_id"]) for a in shop.alerts("destroy_held")) == [1, 2, 3]


@pytest.mark.parametrize("shop_settings", [{"planner": {"min_read_fraction": 0.5}}])
def test_a_vanished_subscription_is_held(shop: Shop, shop_settings: dict[str, Any]) -> None:
    # Given two servers, and one subscription row deleted from the storefront
    shop.subscribe(1)
    shop.subscribe(2, status="expired", expires=shop.clock.now - DAY)
    shop.running(1, 2)
    shop.edd("DELETE FROM {subs} WHERE id = 1")

    # When the planner runs past the grace
    shop.tick()
    shop.tick(after=GRACE + HOUR)

    # Then the vanished one is held and the ended one goes
    assert shop.destroying() == {2}
    assert shop.held() == {1: "vanished"}


@pytest.mark.parametrize("shop_settings", [ROOMY])
def test_a_half_empty_read_destroys_nothing(shop: Shop, shop_settings: dict[str, Any]) -> None:
    # Given ten servers, two of whose subscriptions really ended
    for n in range(1, 11):
        shop.subscribe(n, status="expired" if n <= 2 else "active",
                       expires=shop.clock.now + (-DAY if n <= 2 else 30 * DAY))
    shop.running(*range(1, 11))
    shop.tick()

    # When half of the customers vanish from the read (a half-restored backup)
    shop.edd("DELETE FROM {customers} WHERE id > 5")
    report = shop.tick(after=GRACE + HOUR)

    # Then nothing is destroyed, not even the ones that really ended; one alert says why
    assert shop.destroying() == set()
    assert report.plan is not None and report.plan.thin_read is not None
    assert shop.held() == {**dict.fromkeys((1, 2), "thin_read"), **dict.fromkeys(range(6, 11), "vanished")}
    shop.tick(after=HOUR)
    [alert] = shop.alerts("destroys_held")
    assert "only 5 of 10 live servers" in alert.body

    # And once the read is whole again, the ended ones go
    shop.edd("DELETE FROM {subs} WHERE id > 5")     # (the shop really lost those: re-add them whole)
    for n in range(6, 11):
        shop.subscribe(n)
    shop.tick(after=HOUR)
    assert shop.destroying() == {1, 2}


def test_the_breaker_holds_across_passes_in_a_five_server_fleet(shop: Shop) -> None:
    # Given a fleet of five whose subscriptions all ended (a storefront bug, say)
    for n in range(1, 6):
        shop.subscribe(n, status="expired", expires=shop.clock.now - DAY)
    shop.running(*range(1, 6))
    shop.tick()

    # When the planner runs past the grace, and again and again within the day
    shop.tick(after=GRACE + HOUR)
    first = shop.destroying()
    for _ in range(5):
        shop.tick(after=HOUR)

    # Then one server goes in 24 hours (10 % of 5, but at least 1); the others are held
    assert len(first) == 1 and shop.destroying() == first
    assert set(shop.held().values()) == {"breaker"} and len(shop.held()) == 4
    [alert] = shop.alerts("destroys_held")           # one alert for the whole episode
    assert "circuit breaker holds 4" in alert.body

    # And a day later, one more
    shop.tick(after=DAY)
    assert len(shop.destroying()) == 2 and len(shop.held()) == 3


def test_an_operator_approval_lets_held_destroys_go(shop: Shop) -> None:
    for n in range(1, 4):
        shop.subscribe(n, status="cancelled", expires=shop.clock.now - DAY)
    shop.running(1, 2, 3)
    shop.tick()
    shop.tick(after=GRACE + HOUR)
    held = sorted(shop.held())
    assert len(held) == 2 and len(shop.destroying()) == 1

    # When the operator approves one of the held destroys
    with shop.app.sessions() as s:
        chosen = [shop.server(held[0])]
        approved = holds.approve(s, chosen, actor="operator:ann", now=shop.clock.now)
        s.commit()
    assert [a.subscription_id for a in approved] == [str(held[0])]

    # Then the next pass destroys it (beyond the breaker), and only it
    shop.tick(after=MINUTE)
    assert held[0] in shop.destroying() and held[1] not in shop.destroying()
    assert shop.held() == {held[1]: "breaker"}


def test_approval_refuses_a_destroy_held_for_lack_of_evidence(shop: Shop) -> None:
    shop.subscribe(1, status="mystery", expires=shop.clock.now - DAY)
    shop.running(1)
    shop.tick()
    with shop.app.sessions() as s, pytest.raises(holds.NotHeld, match="lack of evidence"):
        holds.approve(s, [shop.server(1)], actor="operator:ann", now=shop.clock.now)


def test_a_renewal_inside_the_grace_keeps_the_server(shop: Shop) -> None:
    shop.subscribe(1, status="cancelled", expires=shop.clock.now - HOUR)
    shop.running(1)
    shop.tick()
    assert shop.server(1).ended_seen_at is not None

    # When the customer renews a day later
    shop.edd("UPDATE {subs} SET status = 'active', expiration = :e WHERE id = 1",
             e=(shop.clock.now + 30 * DAY).replace(tzinfo=None))
    shop.tick(after=DAY)

    # Then nothing is destroyed then or later, and the first-seen stamp is gone
    shop.tick(after=GRACE)
    assert shop.destroying() == set() and shop.server(1).ended_seen_at is None




def test_the_row_follows_the_storefronts_address_and_account(shop: Shop) -> None:
    # Given a guest checkout's running server: no account, so nobody's dashboard shows it
    shop.subscribe(1, email="c1@example.com")
    shop.running(1)
    shop.tick()
    assert (shop.server(1).user_email, shop.server(1).account_id) == ("c1@example.com", None)

    # When the customer registers in WordPress with another address
    shop.register(1, user_id=42, email="new@example.com")
    shop.tick(after=MINUTE)

    # Then the row names the account and the address the storefront has now, and says so
    row = shop.server(1)
    assert (row.user_email, row.account_id) == ("new@example.com", "42")
    with shop.app.sessions() as s:
        from sqlalchemy import select

        from provisioner.models import ServerEvent

        whats = [e.what for e in s.scalars(select(ServerEvent).where(ServerEvent.server_id == row.id))]
    assert whats.count("email.changed") == 1 and whats.count("account.changed") == 1
