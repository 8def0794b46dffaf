"""Revision 0010 on SQLite and MariaDB: each server's sealed tokens (PKI, .ovpn, root password) move
out of the server table into ``provisioner_server_sealed``, unchanged; the code reads them as before
(``row.secrets_enc`` …), the server table no longer carries them, the downgrade puts them back, and
an upgrade that stopped part-way finishes without copying a row twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import Engine, inspect, select, text

from dashboard_api.queries import ovpn_token
from provisioner import db
from provisioner.models import Server
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.config import write_config
from tests.fixtures.migrations import alembic
from tests.fixtures.services import *  # noqa: F403

SEALED = ("secrets_enc", "ovpn_file_enc", "root_password_enc")
# Tokens as the database holds them (a migration never opens one: it has no key).
RUNNING = ("gAAAAA-pki-" + "p" * 9000, "gAAAAA-ovpn-" + "o" * 4000, "gAAAAA-root")
KEPT = ("gAAAAA-kept-pki", None, None)        # a Destroyed server whose identity is kept


def server_columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("provisioner_servers")}


def insert_at_0009(engine: Engine) -> None:
    """Three servers as revision 0009 stores them: running (all three tokens), destroyed with its PKI
    kept, and queued (none yet)."""
    with engine.begin() as conn:
        for n, (status, tokens) in enumerate((("Running", RUNNING), ("Destroyed", KEPT), ("Queued", (None,) * 3)),
                                             start=1):
            conn.execute(text(
                "INSERT INTO provisioner_servers (customer_id, product_id, subscription_id, user_email, server_name, "
                "status, bandwidth_this_month, bandwidth_limit_this_month, rebuild_schedule, "
                "rebuild_schedule_location, rebuild_now_status, generation, attempts, needs_human, paused, version, "
                "bandwidth_carried, bandwidth_alerted, suspended_by_cap, key_only, access_revision, restart_pending, "
                "created_at, updated_at, secrets_enc, ovpn_file_enc, root_password_enc) "
                "VALUES ('1', '1', :sub, 'a@example.com', :name, :status, 0, 0, 'none', 'random', 0, 1, 0, 0, 0, 1, "
                "0, 0, 0, 0, 0, 0, :at, :at, :pki, :ovpn, :root)"),
                {"sub": f"s{n}", "name": f"g000{n}.vpn.example.com", "status": status, "at": dt.datetime(2026, 11, 1),
                 "pki": tokens[0], "ovpn": tokens[1], "root": tokens[2]})


def tokens_in_server_table(engine: Engine) -> list[tuple[str | None, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {', '.join(SEALED)} FROM provisioner_servers ORDER BY id"))]


def test_the_tokens_move_out_read_the_same_and_come_back_on_downgrade(db_url: str, tmp_path: Path) -> None:
    app = App(load_settings(write_config(tmp_path, database={"url": db_url}), env={}))
    alembic(app.engine, "upgrade", "0009")
    insert_at_0009(app.engine)
    # When the database is upgraded
    db.upgrade(app.engine)
    # Then the server table no longer carries any token, and the code reads each one as before
    assert not server_columns(app.engine) & set(SEALED)
    with app.sessions() as s:
        rows = s.scalars(select(Server).order_by(Server.id)).all()
        assert [(r.secrets_enc, r.ovpn_file_enc, r.root_password_enc) for r in rows] == [RUNNING, KEPT, (None,) * 3]
        assert ovpn_token(s, rows[0].id) == RUNNING[1] and ovpn_token(s, rows[2].id) is None
    with app.engine.connect() as conn:    # one sealed row per server that has a token, none for the queued one
        assert conn.execute(text("SELECT server_id FROM provisioner_server_sealed ORDER BY server_id")
                            ).scalars().all() == [1, 2]
    # and writing a token through the row stores it (the queued server gets its PKI)
    with app.sessions() as s:
        queued = s.get(Server, 3)
        assert queued is not None
        version = queued.version
        queued.secrets_enc = "gAAAAA-new-pki"
        s.commit()
        assert queued.version == version + 1    # the write went through the row's version check
    # When it is downgraded to 0009, every token is back in its column, unchanged
    alembic(app.engine, "downgrade", "0009")
    assert "provisioner_server_sealed" not in inspect(app.engine).get_table_names()
    assert tokens_in_server_table(app.engine) == [RUNNING, KEPT, ("gAAAAA-new-pki", None, None)]
    # and it upgrades again
    db.upgrade(app.engine)
    with app.sessions() as s:
        assert [r.secrets_enc for r in s.scalars(select(Server).order_by(Server.id))] == [
            RUNNING[0], KEPT[0], "gAAAAA-new-pki"]
    app.engine.dispose()


def test_an_upgrade_that_stopped_part_way_finishes_without_copying_a_row_twice(db_url: str, tmp_path: Path) -> None:
    app = App(load_settings(write_config(tmp_path, database={"url": db_url}), env={}))
    alembic(app.engine, "upgrade", "0009")
    insert_at_0009(app.engine)
    # Given an upgrade that made the table and copied the first server before it stopped (MariaDB
    # commits each DDL statement on its own, so a crash can leave this behind at revision 0009)
    with app.engine.begin() as conn:
        conn.execute(text("CREATE TABLE provisioner_server_sealed (server_id INTEGER NOT NULL PRIMARY KEY, "
                          "secrets_enc TEXT, ovpn_file_enc TEXT, root_password_enc TEXT)"))
        conn.execute(text("INSERT INTO provisioner_server_sealed SELECT id, secrets_enc, ovpn_file_enc, "
                          "root_password_enc FROM provisioner_servers WHERE id = 1"))
    # When the upgrade runs again, it finishes
    db.upgrade(app.engine)
    with app.sessions() as s:
        assert [(r.secrets_enc, r.ovpn_file_enc, r.root_password_enc)
                for r in s.scalars(select(Server).order_by(Server.id))] == [RUNNING, KEPT, (None,) * 3]
    app.engine.dispose()
