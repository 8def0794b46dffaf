"""The customer's own server on the page, in a real browser (Playwright + Debian's chromium) at
desktop and phone widths: the root password, SSH keys, devices, the usage chart and the history,
a lapsed customer, and an API that does not answer. Screenshots go to test-artifacts/.

Needs /usr/bin/chromium and the playwright package (tests/fixtures/browser.py); skipped locally
when missing, required under CI=true.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from provisioner import history
from provisioner.models import BandwidthDay, ServerEvent, Status, SubscriptionStanding
from provisioner.vpn.config import validate_ovpn
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ROOT_PASSWORD, STOREFRONT, T0, ApiEnv, build_env, live_server
from tests.fixtures.browser import ARTIFACTS, DESKTOP, PHONE, open_page

pytestmark = pytest.mark.slow

WIDTHS = [pytest.param(DESKTOP, id="desktop"), pytest.param(PHONE, id="phone")]
KEY = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " alice@laptop"


@pytest.fixture
def site(tmp_path: Path, api_db_template: Path) -> Iterator[tuple[ApiEnv, str]]:
    """alice's g0001 (London, with its PKI, two weeks of data, a move in its history, a plan that
    renews) and g0002 (still installing)."""
    env = build_env(tmp_path, template=api_db_template)
    env.add_server(OWNER, "g0001", current_location="lhr", bandwidth_month="2025-03", instance_id="inst-2")
    env.add_server(OWNER, "g0002", status=Status.INSTALLING.value, ovpn=None, server_ip=None, action="create",
                   step="install", last_rebuilt_at=None, bandwidth_this_month=0)
    env.give_vpn("g0001", ovpn=True)
    sid = env.row("g0001").id
    with env.app.sessions() as s:
        s.add_all([BandwidthDay(server_id=sid, instance_id="inst-2", day=dt.date(2025, 3, d),
                                bytes=(d * 37 % 11 + 1) * 1_000_000_000) for d in range(1, 13)])
        s.add(SubscriptionStanding(subscription_id="sub-1", status="active", renews=True, seen_at=T0,
                                   paid_through=T0 + dt.timedelta(days=20), entitled_until=T0 + dt.timedelta(days=20)))
        s.add(ServerEvent(server_id=sid, at=T0 - dt.timedelta(hours=5), actor="worker", what="rebuild.dns",
                          outcome="ok", detail="g0001 → 127.77.0.10; " + history.moved("ewr", "lhr")))
        s.commit()
    with live_server(env.api) as url:
        yield env, url
    env.app.engine.dispose()


def panel(page: Any, short: str = "g0001") -> Any:
    return page.locator(f'.server-panel[data-key="{short}.vpn.example.test"]')


def shot(page: Any, name: str, viewport: tuple[int, int]) -> None:
    width = "desktop" if viewport == DESKTOP else "phone"
    page.screenshot(path=str(ARTIFACTS / f"own-server-{name}-{width}.png"), full_page=True)


@pytest.mark.parametrize("viewport", WIDTHS)
def test_it_reveals_the_root_password_and_manages_ssh_keys(browser: Any, site: tuple[ApiEnv, str],
                                                          viewport: tuple[int, int]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport)
    try:
        g1 = panel(page)
        g1.get_by_text("The VPS VPN · renews on April 1, 2025").wait_for()
        assert page.get_by_text("Signed in as alice@example.com").is_visible()
        # The password: on a click, in a dialog that says a rebuild changes it
        g1.get_by_role("button", name="Show the root password of g0001").click()
        dialog = page.get_by_role("dialog", name="Root password of g0001")
        dialog.get_by_text(ROOT_PASSWORD).wait_for()
        assert dialog.get_by_text("A rebuild sets a new root password").is_visible()
        shot(page, "password", viewport)
        dialog.get_by_role("button", name="Close").click()
        dialog.wait_for(state="hidden")
        assert page.locator("#password-value").text_content() == ""   # not left in the page
        g1.locator(".history-list").get_by_text("Root password viewed").wait_for()
        # A key that is refused says why; a good one is listed and on its way to the server
        g1.get_by_label("Add a public key").fill(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())
        g1.get_by_role("button", name="Add key").click()
        page.locator("#alerts").get_by_text("This RSA key has 2048 bits").wait_for()
        g1.get_by_label("Add a public key").fill(KEY)
        g1.get_by_role("button", name="Add key").click()
        g1.locator(".key-list").get_by_text("alice@laptop").wait_for()
        assert g1.get_by_text("Your changes reach the server within a minute.").is_visible()
        # Key-only login hides the password button
        g1.get_by_label("Key-only login").check()
        g1.get_by_text("Key-only login is on: the root password does not log in.").wait_for()
        assert g1.get_by_role("button", name="Show the root password of g0001").is_hidden()
        shot(page, "ssh-keys", viewport)
        assert env.row("g0001").key_only is True
        # Removing the only key while key-only is on is refused, with the reason
        g1.get_by_role("button", name="Remove the key alice@laptop").click()
        page.locator("#alerts").get_by_text("only key").wait_for()
        g1.get_by_label("Key-only login").uncheck()
        g1.get_by_role("button", name="Show the root password of g0001").wait_for()
        g1.get_by_role("button", name="Remove the key alice@laptop").click()
        g1.locator(".key-list").get_by_text("No keys yet.").wait_for()
        assert problems == [] or all("409" in p or "422" in p for p in problems), problems
    finally:
        context.close()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_it_adds_downloads_and_revokes_a_device(browser: Any, site: tuple[ApiEnv, str],
                                                viewport: tuple[int, int]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport)
    try:
        g1 = panel(page)
        g1.locator(".device-list").get_by_text("Device 1").wait_for()
        g1.get_by_label("New device name").fill("Phone")
        g1.get_by_role("button", name="Add device").click()
        g1.locator(".device-list").get_by_text("Phone").wait_for()
        assert g1.get_by_text("2 of 5 devices").is_visible()
        with page.expect_download() as download:
            g1.get_by_role("button", name="Download the .ovpn profile of Phone").click()
        assert download.value.suggested_filename == "g0001-phone.ovpn"
        validate_ovpn(Path(download.value.path()).read_bytes())
        # Revoking asks first, then the device is marked revoked and the history says so
        g1.get_by_role("button", name="Revoke Phone").click()
        confirm = page.get_by_role("dialog", name="Revoke Phone?")
        assert confirm.get_by_text("Your other devices stay connected.").is_visible()
        shot(page, "device-revoke", viewport)
        confirm.get_by_role("button", name="Revoke").click()
        g1.locator(".device.revoked").get_by_text("Phone").wait_for()
        g1.locator(".history-list").get_by_text("Device 'Phone' revoked").wait_for()
        assert g1.get_by_role("button", name="Revoke Phone").count() == 0
        assert env.row("g0001").access_pending_since is not None
        shot(page, "devices", viewport)
        assert problems == []
    finally:
        context.close()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_it_shows_the_usage_chart_and_the_history_in_plain_words(browser: Any, site: tuple[ApiEnv, str],
                                                                  viewport: tuple[int, int]) -> None:
    env, url = site
    sid = env.row("g0001").id
    with env.app.sessions() as s:  # 25 schedule changes: more than one page of history
        s.add_all([ServerEvent(server_id=sid, at=T0 - dt.timedelta(days=1, minutes=i), actor="customer",
                               what="schedule.changed", outcome="info", detail="none/random -> weekly/fra")
                   for i in range(25)])
        s.commit()
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport)
    try:
        g1 = panel(page)
        chart = g1.get_by_role("img", name="Data used per day in 2025-03")
        chart.wait_for()
        assert chart.locator("rect.bar-day").count() == 12
        description = chart.locator("desc").text_content() or ""
        assert description.startswith("123\u00a0GB of 1\u00a0TB used over 12 days.") and "Busiest day" in description
        g1.get_by_text("Show as a table").click()
        assert g1.locator(".usage-table tbody tr").count() == 12
        items = g1.locator(".history-list li")
        items.first.wait_for()
        assert items.count() == 20
        assert "Rebuild schedule set to weekly (Frankfurt)" in items.first.inner_text()
        g1.get_by_role("button", name="Show older").click()
        g1.locator(".history-list").get_by_text("Moved from New Jersey to London").wait_for()
        assert g1.get_by_role("button", name="Show older").is_hidden()
        assert "create.finish" not in g1.inner_text()           # no step ids
        shot(page, "usage-history", viewport)
        assert problems == []
    finally:
        context.close()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_it_tells_a_lapsed_customer_when_and_why_and_offers_a_renewal(browser: Any, site: tuple[ApiEnv, str],
                                                                       viewport: tuple[int, int]) -> None:
    env, url = site
    for short in ("g0001", "g0002"):
        env.set(short, status=Status.DESTROYED.value, action=None, step=None, destroyed_at=T0 - dt.timedelta(days=2))
    with env.app.sessions() as s:
        standing = s.get(SubscriptionStanding, "sub-1")
        assert standing is not None
        standing.status, standing.renews = "cancelled", False
        standing.entitled_until = standing.paid_through = T0 - dt.timedelta(days=3)
        s.commit()
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport)
    try:
        page.get_by_role("heading", name="Your VPN server has ended").wait_for()
        assert page.get_by_text("g0001 (The VPS VPN) was removed on March 10, 2025: your subscription was "
                                "cancelled.").is_visible()
        assert page.get_by_role("link", name="Renew").get_attribute("href") == f"{STOREFRONT}/pricing"
        assert page.locator("#empty").is_hidden()
        shot(page, "lapsed", viewport)
        assert problems == []
    finally:
        context.close()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_it_says_so_and_offers_a_retry_when_the_api_does_not_answer(browser: Any, site: tuple[ApiEnv, str],
                                                                    viewport: tuple[int, int]) -> None:
    env, url = site
    hang = {"on": True}

    def downloads(route: Any) -> None:
        if not hang["on"]:
            route.continue_()            # the API answers again; else the request is left hanging

    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport,
                                        routes={"**/api/servers/*/ovpn": downloads})
    try:
        button = page.locator('#servers tr[data-key="g0001.vpn.example.test"] .download')
        page.locator('#servers tr[data-key="g0001.vpn.example.test"] .badge').wait_for()
        button.click()
        assert button.is_disabled()
        with page.expect_response("**/api/servers"):   # the list keeps refreshing meanwhile
            page.clock.run_for(15_000)
        page.clock.run_for(16_000)        # past the download's timeout, on the page's own clock
        assert button.is_disabled() is False
        alert = page.locator("#alerts .toast").filter(has_text="The dashboard did not answer in time.")
        alert.wait_for()
        assert "The download failed." in alert.inner_text()
        assert not button.is_disabled()
        shot(page, "timeout", viewport)
        hang["on"] = False
        with page.expect_download() as download:
            alert.get_by_role("button", name="Try again").click()
        assert download.value.suggested_filename == "g0001.ovpn"
        assert problems == []
    finally:
        context.close()


def test_it_offers_a_retry_when_the_first_load_times_out(browser: Any, site: tuple[ApiEnv, str]) -> None:
    env, url = site
    hang = {"on": True}

    def servers(route: Any) -> None:
        if not hang["on"]:
            route.continue_()

    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600),
                                        routes={"**/api/servers": servers})
    try:
        page.get_by_text("Loading your servers").wait_for()
        page.clock.run_for(16_000)
        page.get_by_text("The dashboard did not answer in time. Please try again in a moment.").wait_for()
        hang["on"] = False
        page.get_by_role("button", name="Try again").click()
        page.locator('#servers tr[data-key="g0001.vpn.example.test"] .badge').filter(has_text="Running").wait_for()
        assert problems == []
    finally:
        context.close()
