"""Revision 0009 on SQLite and MariaDB: ``vpn_protocols`` records what each instance was installed
with. A server from before it (NULL) counts as OpenVPN alone, so a product that offers WireGuard
finds it lacking and its sync installs it; the downgrade removes the column and keeps the rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from sqlalchemy import Engine, inspect, select, text

from provisioner import access, db
from provisioner.models import Server
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.config import write_config
from tests.fixtures.migrations import alembic
from tests.fixtures.services import *  # noqa: F403


def columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("provisioner_servers")}


def test_a_server_from_before_counts_as_openvpn_and_the_downgrade_keeps_it(db_url: str, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, database={"url": db_url}), env={})
    app = App(settings)
    # Given a database at revision 0008 with a running server
    alembic(app.engine, "upgrade", "0008")
    assert "vpn_protocols" not in columns(app.engine)
    with app.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO provisioner_servers (customer_id, product_id, subscription_id, user_email, server_name, "
            "status, bandwidth_this_month, bandwidth_limit_this_month, rebuild_schedule, rebuild_schedule_location, "
            "rebuild_now_status, generation, attempts, needs_human, paused, version, bandwidth_carried, "
            "bandwidth_alerted, suspended_by_cap, key_only, access_revision, restart_pending, created_at, updated_at) "
            "VALUES ('1', '1', 's1', 'a@example.com', 'g0001.vpn.example.com', 'Running', 0, 0, 'none', 'random', "
            "0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, :at, :at)"), {"at": dt.datetime(2026, 11, 1, 12)})
    # When it is upgraded
    db.upgrade(app.engine)
    # Then the server is recorded as installed before protocols were (NULL): OpenVPN alone
    with app.sessions() as s:
        row = s.scalars(select(Server)).one()
        assert row.vpn_protocols is None and access.installed(row) == ("openvpn",)
        assert s.scalars(select(Server.id).where(access.gaining(settings))).all() == []
        # and once its product offers WireGuard too, it lacks WireGuard (a sync installs it)
        both = {**settings.products, "1": dataclasses.replace(settings.products["1"],
                                                               protocols=("openvpn", "wireguard"))}
        wider = dataclasses.replace(settings, products=both)
        assert s.scalars(select(Server.id).where(access.gaining(wider))).all() == [row.id]
        access.record_installed(row, ("openvpn", "wireguard"))
        s.commit()
        assert s.scalars(select(Server.id).where(access.gaining(wider))).all() == []
    # When it is downgraded to 0008, the column is gone and the row is intact
    alembic(app.engine, "downgrade", "0008")
    assert "vpn_protocols" not in columns(app.engine)
    with app.engine.connect() as conn:
        assert conn.execute(text("SELECT server_name FROM provisioner_servers")).scalars().all() == [
            "g0001.vpn.example.com"]
    # and it upgrades again
    db.upgrade(app.engine)
    assert "vpn_protocols" in columns(app.engine)
    app.engine.dispose()
