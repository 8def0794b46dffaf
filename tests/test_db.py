"""The schema: created and migrated by `db upgrade`, the same on SQLite and MariaDB."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from provisioner import db
from provisioner.models import Server, ServerEvent
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.config import write_config
from tests.fixtures.services import table_names


def test_it_creates_the_schema_and_is_idempotent(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    db.upgrade(engine)  # a second run at every start changes nothing
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(db.MIGRATIONS)).get_current_head()
    assert head is not None and db.current_revision(engine) == head
    assert {"provisioner_servers", "provisioner_server_events", "provisioner_alembic_version"} <= table_names(db_url)
    engine.dispose()


def test_it_keeps_times_in_utc_across_the_round_trip(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    ny = dt.timezone(dt.timedelta(hours=-5))
    deadline = dt.datetime(2026, 3, 8, 1, 30, tzinfo=ny)
    with db.session_factory(engine)() as s:
        s.add(Server(customer_id="1", product_id="1", subscription_id="42", user_email="a@example.com",
                     step_deadline=deadline))
        s.commit()
    with db.session_factory(engine)() as s:
        row = s.scalars(select(Server)).one()
        assert row.step_deadline == deadline
        assert row.step_deadline.tzinfo == dt.UTC
    engine.dispose()


def test_it_refuses_a_second_row_for_one_subscription(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as s:
        s.add(Server(customer_id="1", product_id="1", subscription_id="42", user_email="a@example.com"))
        s.commit()
        s.add(Server(customer_id="1", product_id="1", subscription_id="42", user_email="a@example.com"))
        with pytest.raises(IntegrityError):
            s.commit()
    engine.dispose()


def test_it_keeps_an_audit_trail_per_server(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as s:
        srv = Server(customer_id="1", product_id="1", subscription_id="7", user_email="a@example.com")
        s.add(srv)
        s.flush()
        s.add_all([ServerEvent(server_id=srv.id, actor="worker", what="create.instance", outcome="started"),
                   ServerEvent(server_id=srv.id, actor="worker", what="create.instance", outcome="ok",
                               detail="instance abc")])
        s.commit()
        events = list(s.scalars(select(ServerEvent).where(ServerEvent.server_id == srv.id)))
    assert [(e.what, e.outcome) for e in events] == [("create.instance", "started"), ("create.instance", "ok")]
    engine.dispose()


def test_it_says_clearly_when_the_database_is_unreachable() -> None:
    engine = db.make_engine("mysql+pymysql://someone:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(db.DatabaseUnavailable) as err:
        db.upgrade(engine)
    assert "cannot connect to database mysql+pymysql://someone:***@127.0.0.1:1/nowhere" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_it_rejects_a_malformed_database_url() -> None:
    with pytest.raises(db.DatabaseUnavailable, match="not a valid SQLAlchemy URL"):
        db.make_engine("not a url")


def test_every_migration_rolls_back_and_forward_again_with_data_in_place(db_url: str) -> None:
    # Given a database at head with a server and its audit trail
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as s:
        row = Server(customer_id="1", product_id="1", subscription_id="42", user_email="a@example.com",
                     server_name="g0001.vpn.example.test", status="Running", server_ip="127.77.0.9",
                     rebuild_schedule="weekly")
        s.add(row)
        s.flush()
        s.add(ServerEvent(server_id=row.id, actor="worker", what="create.boot", outcome="ok",
                          detail="instance i-1 is up at 127.77.0.9"))
        s.commit()
    # When it is rolled back to the first cut's schema and upgraded again
    db.downgrade(engine, "0003")
    assert db.current_revision(engine) == "0003"
    db.upgrade(engine)
    # Then the server and its trail are still there
    with db.session_factory(engine)() as s:
        again = s.scalars(select(Server)).one()
        assert (again.server_name, again.server_ip, again.rebuild_schedule) == (
            "g0001.vpn.example.test", "127.77.0.9", "weekly")
        assert s.scalars(select(ServerEvent)).one().detail == "instance i-1 is up at 127.77.0.9"
    engine.dispose()


def test_it_knows_the_shipped_head_without_alembic_and_upgrades_only_when_behind(db_url: str) -> None:
    from alembic.script import ScriptDirectory

    assert db._heads() == {ScriptDirectory(str(db.MIGRATIONS)).get_current_head()}
    engine = db.make_engine(db_url)
    assert db.upgrade_if_needed(engine) is True       # an empty database: migrated
    assert db.upgrade_if_needed(engine) is False      # at the head: nothing to do
    engine.dispose()


@pytest.mark.slow
def test_the_worker_keeps_no_migration_tool_or_unused_library_parts_resident(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.fixtures.stack import build_stack

    # Given an up-to-date database
    cfg, _, _ = build_stack(tmp_path)
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys, threading, time, os\n"
        "def dump():\n"
        "    time.sleep(6)\n"
        "    print(' '.join(sorted({m.split('.')[0] for m, v in list(sys.modules.items()) if v is not None})))\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n"
        "threading.Thread(target=dump, daemon=True).start()\n"
        f"sys.argv = ['provisioner', '--config', {str(cfg)!r}, 'run']\n"
        "from provisioner.cli import main\n"
        "main()\n")
    subprocess.run([sys.executable, "-m", "provisioner", "--config", str(cfg), "db", "upgrade"], check=True,
                   cwd=tmp_path, capture_output=True)

    # When the real worker has been running for a few seconds
    out = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    # Then neither Alembic nor the command-line and config parts of its libraries were imported
    loaded = set(out.stdout.split())
    assert "sqlalchemy" in loaded and "apscheduler" in loaded, out.stderr[-2000:]
    assert not loaded & {"alembic", "mako", "invoke", "click", "rich", "pygments"}


def test_a_worker_with_many_threads_gets_a_connection_for_each_at_once(tmp_path: Path, db_url: str) -> None:
    # Given a worker configured for 24 drive threads (SQLAlchemy's default pool holds 15)
    app = App(load_settings(write_config(tmp_path, database={"url": db_url}, worker={"threads": 24}), env={}))
    engine = app.engine
    engine.pool._timeout = 3        # noqa: SLF001 - a starved thread fails in seconds, not the default 30
    together = threading.Barrier(24, timeout=10)
    failures: list[BaseException] = []

    def step() -> None:
        try:
            with engine.connect() as conn:     # each drive thread holds its connection through its step
                conn.execute(select(1))
                together.wait()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    # When all of them are in a step at the same moment
    threads = [threading.Thread(target=step) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    # Then none of them waited for another's connection
    assert failures == []
    engine.dispose()
