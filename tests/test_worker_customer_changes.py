"""The real daemon (`provisioner run`) carries a customer's changes to their running server
within seconds: the leader starts a sync or a restart as soon as the row is Running and idle."""

from __future__ import annotations

import signal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dashboard_api.server import create_app
from dashboard_api.tokens import mint_token
from provisioner.cloudinit import generate_client_key
from provisioner.models import Server, ServerEvent
from tests.fixtures.hosts import password_login
from tests.fixtures.stack import Stack, start_worker, wait_until

pytestmark = pytest.mark.slow


def row(stack: Stack) -> Server:
    with stack.app.sessions() as s:
        found = s.scalars(select(Server)).one()
        return found


def test_the_daemon_sends_key_only_login_and_restarts_within_seconds(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com", user_id=1)   # her WordPress account: what the token names
    log = stack.tmp / "worker.log"
    worker = start_worker(stack.config_path, log)
    try:
        assert wait_until(lambda: stack.app.all_servers() and row(stack).status == "Running", 60), log.read_text()
        server = row(stack)
        name = (server.server_name or "").split(".")[0]
        password = stack.app.secret_box.open(server.root_password_enc or "").decode()
        assert password_login(server.server_ip or "", stack.app.settings.ssh.port, password)
        # When the customer adds a key and turns key-only login on through the dashboard API
        headers = {"Authorization": f"Bearer {mint_token(stack.app.settings, 'ann@example.com', 1)}"}
        with TestClient(create_app(stack.app)) as api:
            key = generate_client_key("ann@laptop").public_line
            assert api.post(f"/api/servers/{name}/ssh/keys", headers=headers, json={"public_key": key}).status_code \
                == 201
            assert api.put(f"/api/servers/{name}/ssh/key-only", headers=headers, json={"key_only": True}
                           ).json()["pending"] is True
            # Then the daemon sends it within seconds, and the password is refused from then on
            assert wait_until(lambda: row(stack).access_pending_since is None, 30), log.read_text()
            assert not password_login(server.server_ip or "", stack.app.settings.ssh.port, password)
            assert api.get(f"/api/servers/{name}/ssh", headers=headers).json()["pending"] is False
            # When the customer restarts the server, the daemon reboots it and it comes back
            assert api.post(f"/api/servers/{name}/restart", headers=headers).status_code == 202
            assert wait_until(lambda: not row(stack).restart_pending and row(stack).action is None, 30)
        with stack.app.sessions() as s:
            whats = [e.what for e in s.scalars(select(ServerEvent).order_by(ServerEvent.id))]
        assert "sync.done" in whats and "restart.done" in whats
        assert row(stack).status == "Running"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
