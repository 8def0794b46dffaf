"""Revision 0008 on SQLite and MariaDB: today's servers get their .ovpn as device 1, byte for
byte, with nothing for their customers to do; the downgrade removes what it added."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from dashboard_api.server import create_app
from provisioner import db
from provisioner.cloudinit import generate_host_key
from provisioner.models import Device, DeviceProfile, Server
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.api import FakeClock
from tests.fixtures.config import write_config
from tests.fixtures.migrations import alembic
from tests.fixtures.services import *  # noqa: F403

FIXTURES = Path(__file__).parent / "fixtures" / "vpn"
NEW_TABLES = {"provisioner_devices", "provisioner_device_profiles", "provisioner_ssh_keys",
              "provisioner_bandwidth_days", "provisioner_subscription_standing"}


def old_row(app: App, sub: str, name: str, *, secrets: str | None, ovpn: bytes | None, status: str) -> None:
    """A server row as revision 0004 stores it (raw SQL: today's model has more columns)."""
    with app.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO provisioner_servers (customer_id, product_id, subscription_id, user_email, server_name, "
            "status, secrets_enc, ovpn_file_enc, bandwidth_this_month, bandwidth_limit_this_month, "
            "rebuild_schedule, rebuild_schedule_location, rebuild_now_status, generation, attempts, needs_human, "
            "paused, version, bandwidth_carried, bandwidth_alerted, suspended_by_cap, created_at, updated_at, "
            "current_location) VALUES ('1', '1', :sub, 'alice@example.com', :name, :status, :secrets, :ovpn, 0, 0, "
            "'none', 'random', 0, 0, 0, 0, 0, 1, 0, 0, 0, :at, :at, 'ewr')"),
            {"sub": sub, "name": name, "status": status, "secrets": secrets, "at": dt.datetime(2025, 5, 31, 12),
             "ovpn": app.secret_box.seal(ovpn) if ovpn else None})


def test_it_makes_todays_ovpn_device_1_byte_for_byte_and_downgrades(db_url: str, tmp_path: Path) -> None:
    # Given a database at revision 0004 with a server whose PKI was stored before devices existed
    settings = load_settings(write_config(tmp_path, database={"url": db_url},
                                          cloudflare={"domain": "vpn.example.com"}), env={})
    app = App(settings)
    alembic(app.engine, "upgrade", "0004")
    v1 = (FIXTURES / "pki_v1.json").read_bytes()
    ovpn = (FIXTURES / "pki_v1.ovpn").read_bytes()
    host = generate_host_key()
    sealed = app.secret_box.seal(json.dumps({"pki": base64.b64encode(v1).decode(), "host_private": host.private_pem,
                                             "host_public": host.public_line}).encode())
    old_row(app, "s1", "g0042.vpn.example.com", secrets=sealed, ovpn=ovpn, status="Running")
    old_row(app, "s2", "g0043.vpn.example.com", secrets=None, ovpn=None, status="Destroyed")

    # When the schema is upgraded
    db.upgrade(app.engine)

    # Then the server with a PKI has device 1 with an OpenVPN profile; the destroyed one has none
    with app.sessions() as s:
        devices = list(s.execute(select(Server.server_name, Device.device_id, Device.name, Device.revoked_at)
                                 .join(Device, Device.server_id == Server.id)))
        profiles = list(s.scalars(select(DeviceProfile.protocol)))
        row = s.scalars(select(Server).where(Server.subscription_id == "s1")).one()
        assert (row.key_only, row.access_revision, row.access_pending_since, row.restart_pending) == (
            False, 0, None, False)
    assert devices == [("g0042.vpn.example.com", "1", "Device 1", None)] and profiles == ["openvpn"]

    # And (once the planner's first pass gave the EDD row its storefront account, as it does after
    # revision 0005) the customer's device 1 profile is today's .ovpn, byte for byte, as is the old download
    with app.engine.begin() as conn:
        conn.execute(text("UPDATE provisioner_servers SET account_id = '1' WHERE subscription_id = 's1'"))
    api = create_app(app, clock=FakeClock())
    from dashboard_api.tokens import mint_token

    headers = {"Authorization": f"Bearer {mint_token(settings, 'alice@example.com', 1, now=FakeClock().now)}"}
    with TestClient(api) as client:
        listed = client.get("/api/servers/g0042/devices", headers=headers).json()
        assert [d["id"] for d in listed["devices"]] == ["1"] and listed["ready"] is True
        assert client.get("/api/servers/g0042/devices/1/ovpn", headers=headers).content == ovpn
        assert client.get("/api/servers/g0042/ovpn", headers=headers).content == ovpn
        # and the old PKI takes new devices and revocations like a new one
        assert client.post("/api/servers/g0042/devices", headers=headers, json={"name": "Phone"}).status_code == 201
        assert client.delete("/api/servers/g0042/devices/1", headers=headers).status_code == 200
        assert client.get("/api/servers/g0042/devices/2/ovpn", headers=headers).status_code == 200

    # When it is downgraded to 0004, what 0008 added is gone and the rows are intact
    alembic(app.engine, "downgrade", "0004")
    names = set(inspect(app.engine).get_table_names())
    assert not NEW_TABLES & names
    columns = {c["name"] for c in inspect(app.engine).get_columns("provisioner_servers")}
    assert not {"key_only", "access_pending_since", "access_revision", "restart_pending", "new_ip"} & columns
    with app.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM provisioner_servers")).scalar() == 2
    # and it upgrades again
    db.upgrade(app.engine)
    assert NEW_TABLES <= set(inspect(app.engine).get_table_names())
    app.engine.dispose()
