"""Every message kind, in English and German, delivered to a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from provisioner import notify
from provisioner.models import Server
from provisioner.notify.outbox import send_pending
from provisioner.wiring import App
from tests.fixtures.notify import DASHBOARD, KEY_MARKERS, OPERATOR, SECRET_VALUES, add_server, notify_app
from tests.fixtures.smtp import Received, smtp_server

NOW = dt.datetime(2026, 5, 31, 23, 0, tzinfo=dt.UTC)

CONTEXTS: dict[str, dict[str, Any]] = {
    "server_ready": {},
    "rebuild_done": {"location": "fra"},
    "bandwidth_80": {"used_bytes": 812_400_000_000, "cap_bytes": 1000 * 10**9, "month": "2026-05"},
    "bandwidth_100": {"used_gb": 1000, "cap_gb": 1000, "month": "2026-05", "suspended": True},
    "bandwidth_reset": {"month": "2026-06", "cap_gb": 1000},
    "server_destroyed": {},
    "provisioning_delayed": {},
    "needs_attention": {"error": "Vultr answered 500 on POST /instances"},
}

# (subject fragment, body fragment) per kind and language
EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "server_ready": ("is ready", "installed and running in ams"),
        "rebuild_done": ("has been rebuilt", "now in fra"),
        "bandwidth_80": ("80%", "812 GB of its 1000 GB"),
        "bandwidth_100": ("reached this month's data limit", "so it is paused"),
        "bandwidth_reset": ("allowance for 2026-06", "you have 1000 GB for 2026-06"),
        "server_destroyed": ("has been removed", "subscription has ended"),
        "provisioning_delayed": ("longer than usual", "nothing you need to do"),
    },
    "de": {
        "server_ready": ("ist bereit", "eingerichtet und läuft am Standort ams"),
        "rebuild_done": ("wurde neu aufgebaut", "jetzt am Standort fra"),
        "bandwidth_80": ("80 %", "812 GB von 1000 GB"),
        "bandwidth_100": ("aufgebraucht", "ist deshalb pausiert"),
        "bandwidth_reset": ("für 2026-06", "stehen Ihnen 1000 GB zur Verfügung"),
        "server_destroyed": ("wurde entfernt", "Abonnement ist beendet"),
        "provisioning_delayed": ("länger als üblich", "Sie müssen nichts tun"),
    },
    "fr": {
        "server_ready": ("est prêt", "installé et fonctionne à ams"),
        "rebuild_done": ("a été reconstruit", "désormais à fra"),
        "bandwidth_80": ("80 %", "812 Go de son forfait mensuel de 1000 Go"),
        "bandwidth_100": ("limite de données", "il est donc en pause"),
        "bandwidth_reset": ("pour 2026-06", "vous disposez de 1000 Go pour 2026-06"),
        "server_destroyed": ("a été supprimé", "abonnement a pris fin"),
        "provisioning_delayed": ("plus de temps que d'habitude", "vous n'avez rien à faire"),
    },
}


def enqueue_all(app: Any, server: Server) -> None:
    with app.sessions.begin() as s:
        srv = s.get(Server, server.id)
        for kind, ctx in CONTEXTS.items():
            assert notify.enqueue(s, kind, server=srv, context=ctx, dedupe_key=f"{kind}:{server.id}",
                                  settings=app.settings, now=NOW) == 1


def by_kind(messages: list[Received]) -> dict[str, Received]:
    return {str(m.message["X-Provisioner-Kind"]): m for m in messages}


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_it_sends_every_kind_in_the_customers_language(tmp_path: Path, lang: str) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        server = add_server(app, language=lang)
        enqueue_all(app, server)
        report = send_pending(app.sessions, app.settings.notify, NOW)
        assert report.sent == len(CONTEXTS) and report.failed == report.retried == 0
        got = by_kind(inbox.snapshot())
    assert set(got) == set(CONTEXTS)
    for kind, (subject_part, body_part) in EXPECTED[lang].items():
        m = got[kind]
        assert m.rcpt_tos == ["customer@shop.test"], kind
        assert subject_part in m.subject, (kind, m.subject)
        assert body_part in m.body, (kind, m.body)
        assert "g0001.vpn.example.com" in m.subject + m.body, kind
        assert DASHBOARD in m.body, kind
        assert m.message["Content-Language"] == lang
    assert "http://127.0.0.1:18083/#pricing" in got["server_destroyed"].body  # storefront.url (sandbox.port_base + 3)
    app.engine.dispose()


WIREGUARD_STEP = {"en": "switch the tunnel off and on once", "de": "einmal\naus und wieder ein",
                  "fr": "désactivez puis réactivez une fois le tunnel"}


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_a_rebuild_mail_tells_a_wireguard_customer_to_restart_the_tunnel(lang: str) -> None:
    values = {"server_name": "g0001.vpn.example.com", "location": "ams", "dashboard_url": DASHBOARD,
              "product_name": "VPN", "storefront_url": ""}
    _, plain = notify.render("rebuild_done", lang, {**values, "wireguard": False})
    _, wg = notify.render("rebuild_done", lang, {**values, "wireguard": True})
    assert WIREGUARD_STEP[lang] not in plain and "WireGuard" not in plain
    assert WIREGUARD_STEP[lang] in wg
    assert set(plain.splitlines()) <= set(wg.splitlines())      # everything else is still said


def test_it_alerts_the_operator_with_the_error_and_the_last_ten_events(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        server = add_server(app, language="de")     # the operator reads notify.default_language
        enqueue_all(app, server)
        send_pending(app.sessions, app.settings.notify, NOW)
        alert = by_kind(inbox.snapshot())["needs_attention"]
    assert alert.rcpt_tos == [OPERATOR]
    assert "needs attention" in alert.subject and "create install" in alert.subject
    body = alert.body
    assert "Vultr answered 500 on POST /instances" in body
    assert "sub_1" in body and "customer@shop.test" in body and "attempt 8" in body
    shown = [f"create.step{i} " for i in range(12) if f"create.step{i} " in body]
    assert shown == [f"create.step{i} " for i in range(2, 12)]     # the last 10, oldest first
    assert body.index("create.step2 ") < body.index("create.step11 ")
    app.engine.dispose()


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_it_never_puts_the_ovpn_or_a_secret_in_a_message(tmp_path: Path, lang: str) -> None:
    with smtp_server() as (inbox, port):
        app = notify_app(tmp_path, smtp_port=port)
        enqueue_all(app, add_server(app, language=lang))
        send_pending(app.sessions, app.settings.notify, NOW)
        raw = [m.raw.decode("utf-8", "replace") + m.body for m in inbox.snapshot()]
    assert len(raw) == len(CONTEXTS)
    for text in raw:
        for secret in SECRET_VALUES + KEY_MARKERS:
            assert secret not in text
    app.engine.dispose()


def test_it_uses_the_default_language_when_the_customers_is_unknown(tmp_path: Path) -> None:
    app = notify_app(tmp_path, default_language="de")
    server = add_server(app, language=None)
    with app.sessions.begin() as s:
        notify.enqueue(s, "server_ready", server=s.get(Server, server.id), context={}, dedupe_key="r1",
                       settings=app.settings)
        notify.enqueue(s, "server_ready", server=s.get(Server, server.id), language="it", context={},
                       dedupe_key="r2", settings=app.settings)   # no Italian templates: the default
    from provisioner.models import OutboxMessage
    with app.sessions() as s:
        rows = {r.dedupe_key: r for r in s.query(OutboxMessage)}
    assert rows["r1"].language == "de" and "ist bereit" in rows["r1"].subject
    assert rows["r2"].language == "de"
    app.engine.dispose()


def test_mail_links_go_to_the_stores_dashboard_page(tmp_path: Path) -> None:
    import dataclasses

    base = notify_app(tmp_path)
    store = dataclasses.replace(base.settings.storefront, dashboard_url="https://shop.example.com/account/vpn")
    app = App(dataclasses.replace(base.settings, storefront=store))
    server = add_server(app, language="fr")
    with app.sessions.begin() as s:
        notify.enqueue(s, "server_ready", server=s.get(Server, server.id), context={}, dedupe_key="r1",
                       settings=app.settings)
    from provisioner.models import OutboxMessage
    with app.sessions() as s:
        row = s.query(OutboxMessage).one()
    assert row.language == "fr" and "https://shop.example.com/account/vpn" in row.body
    assert app.settings.api.public_url not in row.body
    app.engine.dispose()


@pytest.mark.parametrize("context", [
    {"error": "-----BEGIN PRIVATE KEY-----\nMIIE..."},
    {"error": "see <ca>\nMIIB...</ca>"},
    {"error": "x", "root_password": "hunter2"},
    {"error": "x", "ovpn": "client\ndev tun"},
    {"error": "wg setconf failed on:\n[Interface]\nPrivateKey = " + "A" * 43 + "="},
    {"error": "[Peer]\n  presharedkey= " + "B" * 43 + "="},
])
def test_it_refuses_context_that_could_leak_a_secret(tmp_path: Path, context: dict[str, Any]) -> None:
    app = notify_app(tmp_path)
    server = add_server(app)
    with app.sessions() as s, pytest.raises(ValueError):
        notify.enqueue(s, "needs_attention", server=s.get(Server, server.id), context=context,
                       dedupe_key="a", settings=app.settings)
    app.engine.dispose()


def test_it_refuses_an_unknown_kind_or_missing_context(tmp_path: Path) -> None:
    app = notify_app(tmp_path)
    server = add_server(app)
    with app.sessions() as s:
        srv = s.get(Server, server.id)
        with pytest.raises(ValueError, match="unknown notification kind"):
            notify.enqueue(s, "server_exploded", server=srv, context={}, dedupe_key="x", settings=app.settings)
        with pytest.raises(ValueError, match="month"):
            notify.enqueue(s, "bandwidth_80", server=srv, context={"used_gb": 1, "cap_gb": 2}, dedupe_key="y",
                           settings=app.settings)
    app.engine.dispose()


def test_every_template_language_has_every_kind() -> None:
    for lang in ("en", "de", "fr"):
        tpl = notify.templates(lang)
        assert tpl is not None
        assert set(notify.KINDS) <= set(tpl), lang
