"""Scheduled rebuilds: which servers are marked, when (exact UTC instants of New York midnight),
how often (once per slot, catch-up once), and how the start times are spread."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.schedules import (
    due_time,
    mark_due_rebuilds,
    rebuild_daily,
    rebuild_monthly,
    rebuild_weekly,
    spread_offset,
)
from provisioner import db
from provisioner.models import Server, ServerEvent
from provisioner.schedule import last_slot

UTC = dt.UTC


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


LONG_AGO = dt.datetime(2026, 1, 1, tzinfo=UTC)


def add_server(sessions: sessionmaker[Session], schedule: str = "daily", *, created: dt.datetime = LONG_AGO,
               status: str = "Running", location: str = "ams", **fields: object) -> int:
    with sessions() as s:
        n = (s.scalar(select(Server.id).order_by(Server.id.desc()).limit(1)) or 0) + 1
        row = Server(customer_id=str(n), product_id="1", subscription_id=f"sub-{n}", user_email=f"c{n}@example.com",
                     server_name=f"g0{n:03d}.vpn.example.test", status=status, rebuild_schedule=schedule,
                     rebuild_schedule_location=location, created_at=created, **fields)
        s.add(row)
        s.commit()
        return row.id


def row(sessions: sessionmaker[Session], rid: int) -> Server:
    with sessions() as s:
        found = s.get(Server, rid)
        assert found is not None
        return found


def events(sessions: sessionmaker[Session], rid: int) -> list[tuple[str, str, str, str]]:
    with sessions() as s:
        q = select(ServerEvent).where(ServerEvent.server_id == rid).order_by(ServerEvent.id)
        return [(e.actor, e.what, e.outcome, e.detail) for e in s.scalars(q)]


def mark(sessions: sessionmaker[Session], now: dt.datetime, spread: float = 0.0, **kw: object) -> list[int]:
    with sessions() as s:
        marked = mark_due_rebuilds(s, now, spread_minutes=spread, **kw)  # type: ignore[arg-type]
        s.commit()
        return marked


def rebuilt(sessions: sessionmaker[Session], rid: int) -> None:
    """What the planner + lifecycle do with a marked row: start (and here, finish) the rebuild."""
    with sessions() as s:
        r = s.get(Server, rid)
        assert r is not None
        r.rebuild_now_status, r.rebuild_now_location, r.rebuild_due_at = False, None, None
        s.commit()


# --- when each schedule fires -----------------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "before", "slot", "label"), [
    # 2026-11-21 is a Saturday, EST (UTC-5): midnight is 05:00Z
    ("daily", utc(2026, 11, 21, 4, 59, 59), utc(2026, 11, 21, 5), "daily slot 2026-11-21 00:00 New York"),
    # Sunday 2026-11-22
    ("weekly", utc(2026, 11, 22, 4, 59, 59), utc(2026, 11, 22, 5), "weekly slot 2026-11-22 00:00 New York"),
    # the 1st of December
    ("monthly", utc(2026, 12, 1, 4, 59, 59), utc(2026, 12, 1, 5), "monthly slot 2026-12-01 00:00 New York"),
    # summer (EDT, UTC-4): midnight is 04:00Z; 2026-06-14 is a Sunday
    ("weekly", utc(2026, 6, 14, 3, 59, 59), utc(2026, 6, 14, 4), "weekly slot 2026-06-14 00:00 New York"),
])
def test_it_marks_each_schedule_at_midnight_new_york(sessions: sessionmaker[Session], schedule: str,
                                                     before: dt.datetime, slot: dt.datetime, label: str) -> None:
    # Given a server whose previous slot is done
    rid = add_server(sessions, schedule, location="lhr", schedule_slot_done=last_slot(schedule, before))
    # When the clock is one second short of the slot, nothing is due
    assert mark(sessions, before) == []
    assert row(sessions, rid).rebuild_now_status is False
    # When it reaches the slot, the server is marked for a rebuild into its schedule location
    assert mark(sessions, slot, spread=60) == [rid]
    r = row(sessions, rid)
    assert (r.rebuild_now_status, r.rebuild_now_location, r.schedule_slot_done) == (True, "lhr", slot)
    assert r.rebuild_due_at == slot + spread_offset(rid, 60)
    assert events(sessions, rid) == [("scheduler", "rebuild.scheduled", "info", label)]


@pytest.mark.parametrize(("schedule", "wrong_day"), [
    ("weekly", utc(2026, 11, 24, 5)),    # a Tuesday midnight
    ("monthly", utc(2026, 12, 2, 5)),    # the 2nd
])
def test_it_does_not_fire_weekly_or_monthly_on_other_midnights(sessions: sessionmaker[Session], schedule: str,
                                                               wrong_day: dt.datetime) -> None:
    rid = add_server(sessions, schedule, schedule_slot_done=last_slot(schedule, wrong_day))
    assert mark(sessions, wrong_day) == []
    assert mark(sessions, wrong_day + dt.timedelta(hours=23, minutes=59)) == []
    assert events(sessions, rid) == []


@pytest.mark.parametrize(("days", "expected"), [
    # spring forward, Sunday 2026-03-08 02:00 EST -> 03:00 EDT
    ((utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)), {
        "daily": [utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)],      # 00:00 EST, then 00:00 EDT
        "weekly": [utc(2026, 3, 8, 5)]}),
    # fall back, Sunday 2026-11-01 02:00 EDT -> 01:00 EST
    ((utc(2026, 10, 31, 12), utc(2026, 11, 2, 12)), {
        "daily": [utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)],    # 00:00 EDT, then 00:00 EST
        "weekly": [utc(2026, 11, 1, 4)],
        "monthly": [utc(2026, 11, 1, 4)]}),
])
def test_it_fires_exactly_once_per_slot_across_both_dst_changes(
        sessions: sessionmaker[Session], days: tuple[dt.datetime, dt.datetime],
        expected: dict[str, list[dt.datetime]]) -> None:
    # Given one server per schedule, set up well before the window
    start, end = days
    ids = {name: add_server(sessions, name, created=start - dt.timedelta(days=40),
                            schedule_slot_done=last_slot(name, start)) for name in expected}
    # When the worker ticks every 15 minutes through the DST day, and each mark is acted on
    fired: dict[str, list[dt.datetime]] = {name: [] for name in expected}
    now = start
    while now <= end:
        for rid in mark(sessions, now):
            name = next(n for n, i in ids.items() if i == rid)
            fired[name].append(now)
            assert row(sessions, rid).rebuild_due_at == row(sessions, rid).schedule_slot_done == now
            rebuilt(sessions, rid)
        now += dt.timedelta(minutes=15)
    # Then each fired at local midnight exactly, never twice, whatever the UTC offset
    assert fired == expected


# --- catch-up, busy servers, schedule changes -------------------------------------------------------

def test_it_catches_up_once_after_downtime_not_once_per_missed_slot(sessions: sessionmaker[Session]) -> None:
    # Given a daily server last rebuilt for the 10th's slot, and a worker down until the 13th, 10:00 New York
    rid = add_server(sessions, "daily", schedule_slot_done=utc(2026, 11, 10, 5))
    restart = utc(2026, 11, 13, 15)
    # When the worker comes back it marks only the latest missed slot (the 13th's)...
    assert mark(sessions, restart, spread=60) == [rid]
    r = row(sessions, rid)
    assert r.schedule_slot_done == utc(2026, 11, 13, 5)
    # ...spread from now, since the slot's own window is long gone
    assert r.rebuild_due_at == restart + spread_offset(rid, 60)
    # And neither the next tick nor the rebuild's completion brings the missed 11th and 12th back
    assert mark(sessions, restart + dt.timedelta(minutes=1), spread=60) == []
    rebuilt(sessions, rid)
    assert mark(sessions, restart + dt.timedelta(hours=1), spread=60) == []
    assert [e[1] for e in events(sessions, rid)] == ["rebuild.scheduled"]
    # And the next midnight is due as usual
    assert mark(sessions, utc(2026, 11, 14, 5), spread=60) == [rid]


def test_it_marks_a_server_busy_at_its_slot_once_it_is_idle(sessions: sessionmaker[Session]) -> None:
    # Given a weekly server in the middle of a rebuild the customer asked for when Sunday's slot comes
    rid = add_server(sessions, "weekly", status="Rebuilding", action="rebuild", step="boot",
                     schedule_slot_done=utc(2026, 11, 15, 5))
    slot = utc(2026, 11, 22, 5)
    assert mark(sessions, slot) == []
    # When the rebuild finishes at 00:20
    with sessions() as s:
        r = s.get(Server, rid)
        assert r is not None
        r.action, r.step, r.status = None, None, "Running"
        s.commit()
    # Then the same slot is marked (once), and due at once: its window has begun
    assert mark(sessions, slot + dt.timedelta(minutes=20), spread=60) == [rid]
    assert row(sessions, rid).schedule_slot_done == slot
    assert row(sessions, rid).rebuild_due_at == due_time(rid, slot, slot + dt.timedelta(minutes=20), 60)
    rebuilt(sessions, rid)
    assert mark(sessions, slot + dt.timedelta(minutes=21)) == []


def test_it_marks_only_the_latest_slot_for_a_server_busy_across_several(sessions: sessionmaker[Session]) -> None:
    rid = add_server(sessions, "daily", status="Error", action="create", needs_human=True,
                     schedule_slot_done=utc(2026, 11, 10, 5))
    for day in (11, 12, 13):
        assert mark(sessions, utc(2026, 11, day, 5)) == []
    with sessions() as s:
        r = s.get(Server, rid)
        assert r is not None
        r.action, r.needs_human = None, False
        s.commit()
    # Error without an action is markable (a rebuild is a way out of it)
    assert mark(sessions, utc(2026, 11, 13, 9)) == [rid]
    assert row(sessions, rid).schedule_slot_done == utc(2026, 11, 13, 5)
    assert len(events(sessions, rid)) == 1


def test_it_counts_from_when_the_schedule_was_saved(sessions: sessionmaker[Session]) -> None:
    # Given a server created long ago whose customer chose "daily" at 15:00 New York today
    rid = add_server(sessions, "daily", created=utc(2026, 1, 1))
    with sessions() as s:
        saved = s.get(Server, rid)
        assert saved is not None
        saved.schedule_set_at = utc(2026, 11, 20, 20)
        s.commit()
    # Then this morning's midnight, already past when it was saved, is not due
    assert mark(sessions, utc(2026, 11, 20, 21)) == []
    # And the next midnight is
    assert mark(sessions, utc(2026, 11, 21, 5)) == [rid]


def test_it_counts_a_new_server_from_its_creation(sessions: sessionmaker[Session]) -> None:
    rid = add_server(sessions, "weekly", created=utc(2026, 11, 22, 18))   # Sunday afternoon
    assert mark(sessions, utc(2026, 11, 23, 5)) == []
    assert mark(sessions, utc(2026, 11, 29, 5)) == [rid]


def test_it_lets_a_pending_customer_rebuild_cover_the_slot(sessions: sessionmaker[Session]) -> None:
    # Given a customer asked for a rebuild into Tokyo just before midnight
    rid = add_server(sessions, "daily", location="ams", rebuild_now_status=True, rebuild_now_location="nrt",
                     schedule_slot_done=utc(2026, 11, 20, 5))
    # When the slot comes, the customer's choice and timing are kept, and the slot counts as done
    assert mark(sessions, utc(2026, 11, 21, 5), spread=60) == []
    r = row(sessions, rid)
    assert (r.rebuild_now_status, r.rebuild_now_location, r.rebuild_due_at) == (True, "nrt", None)
    assert r.schedule_slot_done == utc(2026, 11, 21, 5)
    assert [(e[1], e[2]) for e in events(sessions, rid)] == [("rebuild.scheduled", "skipped")]
    assert mark(sessions, utc(2026, 11, 21, 6)) == []


@pytest.mark.parametrize("fields", [
    {"schedule": "none"},
    {"status": "Destroyed"},
    {"status": "Suspended"},
    {"status": "Installing", "action": "create"},
    {"paused": True},
])
def test_it_leaves_servers_that_must_not_be_rebuilt_alone(sessions: sessionmaker[Session],
                                                         fields: dict[str, object]) -> None:
    fields = dict(fields)
    schedule = str(fields.pop("schedule", "daily"))
    rid = add_server(sessions, schedule, **fields)  # type: ignore[arg-type]
    assert mark(sessions, utc(2026, 11, 21, 5)) == []
    assert row(sessions, rid).rebuild_now_status is False
    assert events(sessions, rid) == []


def test_it_runs_each_cron_job_for_its_own_schedule_only(sessions: sessionmaker[Session]) -> None:
    # Sunday 2026-11-01 is also the 1st: every schedule is due at 04:00Z
    ids = {name: add_server(sessions, name, created=utc(2026, 10, 1)) for name in ("daily", "weekly", "monthly")}
    now = utc(2026, 11, 1, 4)
    for job, name in ((rebuild_weekly, "weekly"), (rebuild_monthly, "monthly"), (rebuild_daily, "daily")):
        with sessions() as s:
            assert job(s, now) == [ids[name]]
            s.commit()
    with sessions() as s:
        assert rebuild_daily(s, now) == rebuild_weekly(s, now) == rebuild_monthly(s, now) == []


def test_it_skips_a_row_changed_underneath_it_and_marks_it_next_round(engine: Engine,
                                                                      sessions: sessionmaker[Session]) -> None:
    # Given two due servers, and another worker that changes the first one right as it is written
    first, second = add_server(sessions, "daily"), add_server(sessions, "daily")
    now = utc(2026, 11, 21, 5)
    with sessions() as s:
        bumped: list[int] = []

        @event.listens_for(s, "before_flush")
        def someone_else_writes(session: Session, *_: object) -> None:
            if not bumped:
                bumped.append(first)
                with engine.begin() as other:
                    other.execute(text("UPDATE provisioner_servers SET version = version + 1 WHERE id = :i"),
                                  {"i": first})

        # When marking, the first row's write loses the compare-and-set
        assert mark_due_rebuilds(s, now, spread_minutes=0) == [second]
        s.commit()
    # Then it was left untouched (no half-written mark, no event), and the next call marks it
    assert row(sessions, first).rebuild_now_status is False and events(sessions, first) == []
    assert mark(sessions, now + dt.timedelta(minutes=1)) == [first]


# --- the spread -------------------------------------------------------------------------------------

def test_it_spreads_a_thousand_weekly_rebuilds_over_the_window(sqlite_url: str) -> None:
    # (SQLite only: this is about the arithmetic, and 1,000 commits on two backends would double the time)
    engine = db.make_engine(sqlite_url)
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))  # 1,000 commits
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    # Given 1,000 weekly servers
    with sessions() as s:
        s.add_all([Server(customer_id=str(n), product_id="1", subscription_id=f"sub-{n}",
                          user_email=f"c{n}@example.com", status="Running", rebuild_schedule="weekly",
                          created_at=utc(2026, 1, 1)) for n in range(1000)])
        s.commit()
    slot = utc(2026, 11, 22, 5)
    # When Sunday's slot comes with a 60-minute spread
    marked = mark(sessions, slot, spread=60)
    assert len(marked) == 1000
    with sessions() as s:
        due = {rid: at for rid, at in s.execute(select(Server.id, Server.rebuild_due_at))}
    offsets = [(at - slot).total_seconds() for at in due.values()]
    # Then every start is inside the window...
    assert all(0 <= o < 3600 for o in offsets)
    # ...spread evenly: each 10-minute slice holds 1/6 of them (167 expected), none at once
    slices = Counter(int(o // 600) for o in offsets)
    assert sorted(slices) == [0, 1, 2, 3, 4, 5]
    assert all(120 <= n <= 215 for n in slices.values()), slices
    assert max(Counter(offsets).values()) <= 5          # no crowd on any one second
    assert sum(1 for o in offsets if o < 60) <= 40      # the first minute gets ~17, not hundreds
    # And each server's offset is a function of its id alone (any process, any day)
    assert all(due[rid] == slot + spread_offset(rid, 60) for rid in due)
    assert spread_offset(7, 60) == spread_offset(7, 60) != spread_offset(8, 60)
    assert due_time(7, utc(2026, 11, 29, 5), utc(2026, 11, 29, 5), 60) - utc(2026, 11, 29, 5) == \
        spread_offset(7, 60)
    engine.dispose()


def test_it_starts_everything_at_the_slot_without_a_spread(sessions: sessionmaker[Session]) -> None:
    rid = add_server(sessions, "daily")
    assert spread_offset(rid, 0) == dt.timedelta(0)
    assert mark(sessions, utc(2026, 11, 21, 5), spread=0) == [rid]
    assert row(sessions, rid).rebuild_due_at == utc(2026, 11, 21, 5)


def test_the_due_schedule_query_reads_two_index_ranges(db_url: str) -> None:
    import datetime as dt

    from sqlalchemy import text

    from jobs.schedules import candidates_query
    from provisioner import db

    engine = db.make_engine(db_url)
    db.upgrade(engine)
    sql = str(candidates_query("daily", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
              .compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert plan.count("USING INDEX ix_provisioner_servers_schedule (rebuild_schedule=? AND "
                              "schedule_slot_done") == 2, plan
            assert "SCAN" not in plan, plan
        else:
            # an empty table's plan may pick another index; each part must consider this one and use one
            found = [r for r in conn.execute(text("EXPLAIN " + sql)).mappings() if r["table"] == "provisioner_servers"]
            assert len(found) == 2 and all("ix_provisioner_servers_schedule" in str(r["possible_keys"])
                                           and r["key"] for r in found), found
    engine.dispose()
