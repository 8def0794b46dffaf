"""``GET /api/servers`` sends a remembered body again only while what it shows is unchanged:
every change to a row, every new line of history and every passing scheduled slot shows on
the next poll, whoever wrote it and however."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from dashboard_api import listing
from dashboard_api.listing import ServerListing
from provisioner.models import Server, ServerEvent
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ApiEnv, build_env


def _servers(env: ApiEnv, headers: dict[str, str]) -> dict[str, dict]:
    r = env.client.get("/api/servers", headers=headers)
    assert r.status_code == 200, r.text
    return {s["short_name"]: s for s in r.json()}


def _add_event(env: ApiEnv, short: str, what: str, *, event_id: int | None = None) -> None:
    with env.app.sessions() as s:
        s.add(ServerEvent(id=event_id, server_id=env.row(short).id, at=env.clock.now, actor="worker", what=what,
                          outcome="ok", detail=""))
        s.commit()


@pytest.fixture
def any_db_env(tmp_path: Path, db_url: str) -> Iterator[ApiEnv]:
    e = build_env(tmp_path, database_url=db_url)
    e.add_server(OWNER, "g0001", rebuild_schedule="daily")
    with e.client:
        yield e
    e.app.engine.dispose()


def test_a_new_line_of_history_shows_on_the_next_poll(any_db_env: ApiEnv) -> None:
    owner = any_db_env.headers()
    assert _servers(any_db_env, owner)["g0001"]["events"][0]["what"] == "create.finish"

    any_db_env.clock.advance(15)
    _add_event(any_db_env, "g0001", "rebuild.requested")

    assert _servers(any_db_env, owner)["g0001"]["events"][0]["what"] == "rebuild.requested"


def test_a_change_written_without_the_orm_shows_on_the_next_poll(any_db_env: ApiEnv) -> None:
    # Given a poll that the page made (its body is remembered)
    owner = any_db_env.headers()
    before = _servers(any_db_env, owner)["g0001"]

    # When a job writes the row with plain SQL, without bumping its version (as a sync might)
    with any_db_env.app.engine.begin() as conn:
        conn.execute(update(Server).where(Server.server_name.like("g0001.%"))
                     .values(bandwidth_this_month=before["bandwidth_used"] + 5_000_000, status="Rebuilding"))

    # Then the next poll shows it
    after = _servers(any_db_env, owner)["g0001"]
    assert (after["bandwidth_used"], after["status"]) == (before["bandwidth_used"] + 5_000_000, "Rebuilding")


def test_the_next_scheduled_rebuild_moves_once_the_clock_passes_it(any_db_env: ApiEnv) -> None:
    # Given a poll 20 s before the next scheduled rebuild
    slot = dt.datetime.fromisoformat(_servers(any_db_env, any_db_env.headers())["g0001"]["next_scheduled_rebuild"])
    any_db_env.clock.now = slot - dt.timedelta(seconds=20)
    owner = any_db_env.headers()   # a token of that day
    assert _servers(any_db_env, owner)["g0001"]["next_scheduled_rebuild"] == slot.isoformat().replace("+00:00", "Z")

    # When the slot passes (well within the age a remembered body may reach)
    any_db_env.clock.advance(21)

    # Then the poll shows the slot after it
    after = dt.datetime.fromisoformat(_servers(any_db_env, owner)["g0001"]["next_scheduled_rebuild"])
    assert after > slot


def test_a_line_of_history_that_commits_late_shows_within_the_bound(api_env: ApiEnv, owner: dict[str, str]) -> None:
    # Given the newest event with a high id, and a poll
    _add_event(api_env, "g0001", "restart.requested", event_id=1_000)
    assert _servers(api_env, owner)["g0001"]["events"][0]["what"] == "restart.requested"

    # When an event with a lower id commits after it (as two MariaDB transactions can)
    api_env.clock.advance(1)
    _add_event(api_env, "g0001", "restart.finished", event_id=900)

    # Then the page shows it once the remembered body is at most MAX_AGE old
    api_env.clock.advance(listing.MAX_AGE.total_seconds())
    assert _servers(api_env, owner)["g0001"]["events"][0]["what"] == "restart.finished"


def test_each_customer_gets_their_own_servers_after_another_polled(api_env: ApiEnv, owner: dict[str, str],
                                                                    another_customer: dict[str, str]) -> None:
    assert set(_servers(api_env, owner)) == {"g0001", "g0002"}
    assert set(_servers(api_env, another_customer)) == {"g0003"}
    assert set(_servers(api_env, owner)) == {"g0001", "g0002"}


def test_an_unchanged_poll_runs_the_one_query_of_the_rows(api_env: ApiEnv, owner: dict[str, str]) -> None:
    # The reason it exists: a second poll of unchanged rows skips the events query and the
    # serialisation. Counted on the read connection's own SQLite trace.
    first, second, statements = _second_poll(api_env, owner)
    assert second == first
    assert len(statements) == 1 and "provisioner_server_events" in statements[0]   # the rows' newest event id


def _second_poll(env: ApiEnv, headers: dict[str, str]) -> tuple[bytes, bytes, list[str]]:
    """Two polls: both bodies, and the statements the second ran on the read connection."""
    first = env.client.get("/api/servers", headers=headers).content
    (conn,) = env.api.state.dashboard.reader._idle
    statements: list[str] = []
    conn.connection.dbapi_connection.set_trace_callback(statements.append)
    try:
        second = env.client.get("/api/servers", headers=headers).content
    finally:
        conn.connection.dbapi_connection.set_trace_callback(None)
    return first, second, statements


def test_the_operator_can_size_the_store_or_turn_it_off(tmp_path: Path, api_db_template: Path) -> None:
    for megabytes, statements in ((0, 2), (1, 1)):
        directory = tmp_path / str(megabytes)
        directory.mkdir()
        env = build_env(directory, template=api_db_template, listing_memory_mb=megabytes)
        env.add_server(OWNER, "g0001")
        with env.client:
            first, second, ran = _second_poll(env, env.headers())
            assert second == first and len(ran) == statements, (megabytes, ran)
        env.app.engine.dispose()


def test_the_remembered_bodies_stay_within_their_byte_bound(api_env: ApiEnv) -> None:
    # Given a listing that may hold about two one-server bodies
    store = ServerListing(max_bytes=4_000)
    reader = api_env.api.state.dashboard.reader
    for n in range(4, 14):
        api_env.add_server(f"c{n}@example.com", f"g{n:04d}", account_id=str(n))

    # When ten customers poll
    bodies = [reader._run(lambda conn, n=n: store.body(conn, str(n), api_env.settings, api_env.clock.now))
              for n in range(4, 14)]

    # Then each got their own, and what is kept stays under the bound (the oldest go first)
    assert all(f"g{n:04d}".encode() in body for n, body in zip(range(4, 14), bodies, strict=True))
    assert 0 < store.remembered_bytes() <= 4_000
    big = ServerListing(max_bytes=10)
    reader._run(lambda conn: big.body(conn, "4", api_env.settings, api_env.clock.now))
    assert big.remembered_bytes() == 0         # a body larger than the whole bound is not kept
