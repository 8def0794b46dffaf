"""What a new server costs at the providers, counted in the sandbox's call log: on the happy
path one create and one boot poll at Vultr and one record write at Cloudflare; a look-up by
label only when the create step is re-entered after a POST that may have happened."""

from __future__ import annotations

from collections import Counter

import pytest

from jobs.driver import drive_until_idle
from provisioner.models import Server
from provisioner.steps import BootTimes
from tests.fixtures.stack import Stack

SANDBOX_BOOT = 0.3


def _calls(stack: Stack, since: int) -> Counter[str]:
    return Counter(c["endpoint"] for c in stack.sandbox.calls()[since:])


NO_SNAPSHOTS = {"lifecycle": {"snapshots": False}}   # the default; the sandbox configuration turns them on


@pytest.mark.parametrize("stack", [NO_SNAPSHOTS], indirect=True)
def test_it_builds_a_new_server_with_two_vultr_calls_and_one_cloudflare_call(stack: Stack) -> None:
    # Given a worker that has seen boots finish within a second, and its OS catalogue loaded
    lc = stack.lifecycle()
    lc.ctx.boots.observe(SANDBOX_BOOT + 0.5)
    stack.create_server(1, "ann@example.com", lc=lc)
    before = len(stack.sandbox.calls())

    # When two more servers are built
    for sub in (2, 3):
        stack.create_server(sub, f"user{sub}@example.com", lc=lc)

    # Then each cost a create and a single boot poll at Vultr and one POST at Cloudflare
    assert _calls(stack, before) == {"POST /v2/instances": 2, "GET /v2/instances/{id}": 2,
                                     "POST /client/v4/zones/{zone_id}/dns_records": 2}
    with stack.app.sessions() as s:
        assert {r.status for r in s.query(Server)} == {"Running"}


@pytest.mark.parametrize("stack", [NO_SNAPSHOTS], indirect=True)
def test_it_looks_up_the_label_only_after_a_create_whose_reply_was_lost(stack: Stack) -> None:
    # Given Vultr creates the instance but the reply never arrives
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"lost_reply_first": 1}}})

    # When the server is built (the step fails, is retried, and looks before posting again)
    rid = stack.create_server()

    # Then the instance that was made is adopted: one POST, one look-up by label, one instance
    calls = _calls(stack, 0)
    assert calls["POST /v2/instances"] == 1 and calls["GET /v2/instances"] == 1
    assert len([i for i in stack.state()["instances"] if "provisioner" in i["tags"]]) == 1
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None and row.status == "Running" and row.create_sent_generation == row.generation


def test_it_destroys_by_the_stored_ids_without_listing_the_fleet(stack: Stack) -> None:
    # Given a running server among others
    rid = stack.create_server(1)
    stack.create_server(2, "bob@example.com")
    before = len(stack.sandbox.calls())

    # When it is destroyed
    stack.act(rid, "destroy")

    # Then its instance was checked and deleted by id; nothing listed every instance
    calls = _calls(stack, before)
    assert calls["GET /v2/instances"] == 0
    assert calls["GET /v2/instances/{id}"] == 1 and calls["DELETE /v2/instances/{id}"] == 1
    assert len([i for i in stack.state()["instances"] if "provisioner" in i["tags"]]) == 1


@pytest.mark.parametrize("boots", [[5.0, 3.0, 4.0]])
def test_boot_times_wait_for_the_fastest_recent_boot(boots: list[float]) -> None:
    now = [0.0]
    times = BootTimes(window=3, monotonic=lambda: now[0])
    assert times.started("a", fallback=1.0) == 1.0          # nothing learnt: the fallback
    now[0] = 1.0
    times.not_yet("a")                                       # the first poll was too early
    now[0] = 3.5
    times.ready("a")                                         # seen ready 3.5 s after the reply
    assert times.expected(fallback=1.0) == 3.5
    assert times.started("b", fallback=1.0) == 3.5
    now[0] = 3.5 + 3.5
    times.ready("b")                                         # ready at its first poll: 3.5 recorded
    assert times.expected(fallback=1.0) == 3.5               # no creep upwards
    for seconds in boots:
        times.observe(seconds)
    assert times.expected(fallback=1.0) == min(boots)        # only the last `window` count


def test_a_burst_of_creates_polls_each_boot_once_when_the_first_poll_shows_boots_take_longer() -> None:
    # Given three instances created at once, before this worker has seen any boot end (poll 1 s)
    now = [0.0]
    times = BootTimes(monotonic=lambda: now[0])
    assert [times.started(i, fallback=1.0) for i in "abc"] == [1.0, 1.0, 1.0]

    # When the first is polled after a second and is still booting
    now[0] = 1.0
    assert times.hold_back("a") == 0.0
    times.not_yet("a")

    # Then the others are not polled at their second (they would be booting too), but with a's
    # next poll; a create made now waits as long; an instance made elsewhere is polled as due
    now[0] = 1.05
    assert times.hold_back("b") == pytest.approx(0.95)
    assert times.hold_back("c") == pytest.approx(0.95)
    assert times.started("d", fallback=1.0) == 2.0
    assert times.hold_back("other-worker's") == 0.0
    now[0] = 2.0
    assert times.hold_back("a") == times.hold_back("b") == 0.0

    # And once a boot is seen over, none is polled before the fastest boot seen
    times.ready("a")                       # over 2.0 s after its create
    now[0] = 2.5
    assert times.hold_back("d") == pytest.approx(0.55)    # made at 1.05: polled at 3.05
    assert times.expected(fallback=1.0) == 2.0


SLOW_BOOTS = {"lifecycle": {"snapshots": False, "poll_seconds": 0.1}, "sandbox": {"boot_seconds": 1.0}}


@pytest.mark.parametrize("stack", [SLOW_BOOTS], indirect=True)
def test_a_burst_of_new_servers_does_not_poll_every_boot_at_every_poll_interval(stack: Stack) -> None:
    # Given a worker that has seen no boot yet, and boots (1 s) ten times longer than its poll (0.1 s)
    lc = stack.lifecycle()
    rids = [stack.begin_create(sub, f"user{sub}@example.com", lc) for sub in range(1, 7)]
    before = len(stack.sandbox.calls())

    # When the six are built at once
    drive_until_idle(lc, rids, timeout=60, threads=6)

    # Then the boot polls are about one instance's worth plus one each, not six each
    polls = _calls(stack, before)["GET /v2/instances/{id}"]
    assert polls <= 24, polls    # ~15: one instance ~10 times, the others once or twice (~33 unheld)
    with stack.app.sessions() as s:
        assert {r.status for r in s.query(Server)} == {"Running"}


def test_a_boot_held_back_is_learnt_as_the_time_until_it_was_seen_over() -> None:
    # Given b created with a 1 s wait, held back after a was seen booting at 1 s
    now = [0.0]
    times = BootTimes(monotonic=lambda: now[0])
    times.started("a", fallback=1.0), times.started("b", fallback=1.0)
    now[0] = 1.0
    times.not_yet("a")
    assert times.hold_back("b") == 1.0

    # When b is polled at 2 s and is over
    now[0] = 2.0
    assert times.hold_back("b") == 0.0
    times.ready("b")

    # Then the next create waits the 2 s it took, not the 1 s it was first given
    assert times.started("c", fallback=1.0) == 2.0


def test_a_first_poll_that_came_late_is_learnt_as_the_time_it_took_not_the_wait_it_was_given() -> None:
    # Given an instance given 1 s whose first poll came at 2.5 s (the driver was busy) and found it over
    now = [0.0]
    times = BootTimes(monotonic=lambda: now[0])
    times.started("a", fallback=1.0)
    now[0] = 2.5
    times.ready("a")

    # Then what is known is that it booted within 2.5 s, not within 1 s
    assert times.expected(fallback=1.0) == 2.5
