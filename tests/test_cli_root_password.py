"""`provisioner root-password SERVER`: support reads the root password through the customer
service, and the customer sees that support did."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from provisioner import db
from provisioner.models import Server, ServerEvent
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.config import write_config
from tests.test_cli import assert_one_line_error, run


def given_servers(tmp: Path) -> Path:
    cfg = write_config(tmp)
    app = App(load_settings(cfg, env={}))
    db.upgrade(app.engine)
    with app.sessions() as s:
        s.add_all([
            Server(customer_id="1", product_id="1", subscription_id="1", user_email="a@example.com",
                   server_name="g0001.vpn.example.test", status="Running",
                   root_password_enc=app.secret_box.seal(b"s3cret-Root-pw")),
            Server(customer_id="2", product_id="1", subscription_id="2", user_email="b@example.com",
                   server_name="g0002.vpn.example.test", status="Running", key_only=True,
                   root_password_enc=app.secret_box.seal(b"other-Root-pw")),
            Server(customer_id="3", product_id="1", subscription_id="3", user_email="c@example.com",
                   server_name="g0003.vpn.example.test", status="Queued")])
        s.commit()
    app.engine.dispose()
    return cfg


def events(cfg: Path) -> list[tuple[str | None, str, str, str]]:
    app = App(load_settings(cfg, env={}))
    with app.sessions() as s:
        found = [(s.get(Server, e.server_id).server_name, e.actor, e.what, e.detail)  # type: ignore[union-attr]
                 for e in s.scalars(select(ServerEvent).order_by(ServerEvent.id))]
    app.engine.dispose()
    return found


def test_it_prints_the_password_and_records_that_support_saw_it(tmp_path: Path) -> None:
    cfg = given_servers(tmp_path)
    proc = run(tmp_path, "--config", str(cfg), "root-password", "g0001", env={"USER": "sam"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "s3cret-Root-pw\n" and "s3cret" not in proc.stderr
    assert events(cfg) == [("g0001.vpn.example.test", "operator:sam", "root_password.viewed", "")]


def test_it_still_prints_a_key_only_servers_password_with_a_note(tmp_path: Path) -> None:
    cfg = given_servers(tmp_path)
    proc = run(tmp_path, "--config", str(cfg), "root-password", "g0002.vpn.example.test")
    assert proc.returncode == 0 and proc.stdout == "other-Root-pw\n"
    assert "key-only login" in proc.stderr and "other-Root-pw" not in proc.stderr


def test_it_says_clearly_when_there_is_no_password_or_no_server(tmp_path: Path) -> None:
    cfg = given_servers(tmp_path)
    assert_one_line_error(run(tmp_path, "--config", str(cfg), "root-password", "g0003"), 2,
                          "server g0003.vpn.example.test: The root password is set when the server is built")
    assert_one_line_error(run(tmp_path, "--config", str(cfg), "root-password", "g0999"), 2, "no server named 'g0999'")
    assert events(cfg) == []
