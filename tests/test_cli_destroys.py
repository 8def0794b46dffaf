"""`provisioner destroys`: what the planner holds and why; approving breaker-held destroys."""

from __future__ import annotations

import json

from sqlalchemy import select

from provisioner.models import ServerEvent
from tests.fixtures.shop import DAY, HOUR, Shop


def _held_five(shop: Shop) -> None:
    """Five servers whose subscriptions ended: the breaker lets one go and holds four."""
    for n in range(1, 6):
        shop.subscribe(n, status="expired", expires=shop.clock.now - DAY)
    shop.running(*range(1, 6))
    shop.tick()
    shop.tick(after=49 * HOUR)


def test_it_lists_held_destroys_with_their_reasons(sqlite_shop: Shop) -> None:
    _held_five(sqlite_shop)
    out = sqlite_shop.cli("destroys", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 4 and {r["code"] for r in rows} == {"breaker"}
    assert all("circuit breaker" in r["reason"] and r["approved_by"] is None for r in rows)
    text = sqlite_shop.cli("destroys")
    assert text.returncode == 0 and "breaker" in text.stdout and rows[0]["server"] in text.stdout


def test_an_approval_is_audited_and_the_next_pass_destroys(sqlite_shop: Shop) -> None:
    _held_five(sqlite_shop)
    held = sorted(sqlite_shop.held())
    name = sqlite_shop.server(held[0]).server_name or ""
    out = sqlite_shop.cli("destroys", "approve", name.split(".")[0])
    assert out.returncode == 0, out.stderr
    assert "approved: 1 destroy(s)" in out.stdout
    with sqlite_shop.app.sessions() as s:
        [event] = s.scalars(select(ServerEvent).where(ServerEvent.what == "destroy.approved"))
    assert event.actor.startswith("operator:") and event.server_id == sqlite_shop.server(held[0]).id
    sqlite_shop.tick(after=HOUR)
    assert held[0] in sqlite_shop.destroying() and held[1] not in sqlite_shop.destroying()


def test_bad_input_gets_one_line_and_changes_nothing(sqlite_shop: Shop) -> None:
    _held_five(sqlite_shop)
    sqlite_shop.subscribe(9, status="mystery", expires=sqlite_shop.clock.now - DAY)
    sqlite_shop.running(9)
    sqlite_shop.tick(after=HOUR)
    before = sqlite_shop.held()
    for args, says in ((("destroys", "approve"), "name the servers"),
                       (("destroys", "approve", "g9999"), "no server named 'g9999'"),
                       (("destroys", "approve", "g0009"), "lack of evidence"),
                       (("destroys", "approve", "--all", "g0001"), "name the servers")):
        out = sqlite_shop.cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and says in out.stderr, (args, out.stderr)
    assert sqlite_shop.held() == before
    with sqlite_shop.app.sessions() as s:
        assert list(s.scalars(select(ServerEvent).where(ServerEvent.what == "destroy.approved"))) == []
