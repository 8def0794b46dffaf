"""The dashboard page in a real browser (Playwright + Debian's chromium), against the API served
by uvicorn on 127.0.0.1. Screenshots go to test-artifacts/ (gitignored).

Needs /usr/bin/chromium (apt-get install chromium) and the playwright package
(tests/fixtures/browser.py). Skipped locally when missing, required under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.models import Status
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OTHER, OVPN, OWNER, STOREFRONT, ApiEnv, build_env, live_server
from tests.fixtures.browser import ARTIFACTS, open_page, row

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path, api_db_template: Path) -> Iterator[tuple[ApiEnv, str]]:
    env = build_env(tmp_path, template=api_db_template)
    env.add_server(OWNER, "g0001", current_location="lhr")
    env.add_server(OWNER, "g0002", status=Status.INSTALLING.value, ovpn=None, server_ip=None, action="create",
                   step="install", last_rebuilt_at=None, bandwidth_this_month=0)
    env.add_server(OTHER, "g0003")
    with live_server(env.api) as url:
        yield env, url
    env.app.engine.dispose()


def test_it_shows_rebuilds_schedules_and_downloads(browser: Any, site: tuple[ApiEnv, str]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600))
    try:
        # The owner's servers, and only theirs; the token has left the address bar
        g1, g2 = row(page, "servers", "g0001"), row(page, "servers", "g0002")
        g1.locator(".badge").filter(has_text="Running").wait_for()
        assert page.locator("#servers tbody tr").count() == 2
        assert "g0003" not in page.locator("#servers").inner_text()
        assert page.evaluate("location.hash") == ""
        assert "London" in g1.inner_text() and "127.77.0.10" in g1.inner_text()
        assert "123\u00a0GB of 1\u00a0TB (12%)" in g1.inner_text()
        assert "Installing" in g2.inner_text() and "Installing the VPN" in g2.inner_text()
        assert g2.get_by_role("button", name="Rebuild g0002").is_disabled()
        page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)

        # Keyboard: Enter on Rebuild opens the dialog, Escape closes it and focus comes back
        g1.get_by_role("button", name="Rebuild g0001").focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Rebuild g0001"

        # Rebuild in Amsterdam: confirmation, toast, the row shows the request, the row in the DB has it
        g1.get_by_role("button", name="Rebuild g0001").click()
        dialog.get_by_label("Location").select_option("ams")
        page.screenshot(path=str(ARTIFACTS / "dashboard-rebuild-dialog.png"))
        dialog.get_by_role("button", name="Rebuild now").click()
        page.locator("#toasts").get_by_text("Rebuild of g0001 requested (Amsterdam)").wait_for()
        g1.locator(".badge").filter(has_text="Rebuild requested").wait_for()
        assert g1.get_by_role("button", name="Rebuild g0001").is_disabled()
        stored = env.row("g0001")
        assert (stored.rebuild_now_status, stored.rebuild_now_location) == (True, "ams")

        # The 15-second refresh picks up the worker's progress
        env.set("g0001", rebuild_now_status=False, action="rebuild", step="boot", status=Status.REBUILDING.value)
        page.clock.run_for(16_000)
        g1.locator(".progress").filter(has_text="Starting the server").wait_for()

        # Save a weekly schedule to Frankfurt: toast, and it is in the database
        s1 = row(page, "scheduler", "g0001")
        s1.get_by_label("Schedule for g0001").select_option("weekly")
        s1.get_by_label("Rebuild location for g0001").select_option("fra")
        s1.get_by_role("button", name="Save the schedule of g0001").click()
        page.locator("#toasts").get_by_text("Schedule of g0001 saved: Weekly, Frankfurt.").wait_for()
        stored = env.row("g0001")
        assert (stored.rebuild_schedule, stored.rebuild_schedule_location) == ("weekly", "fra")
        assert s1.locator("td").nth(2).inner_text().strip() != "—"   # next rebuild is shown

        # Download the .ovpn through the bearer-token fetch: the exact bytes
        with page.expect_download() as download:
            g1.get_by_role("button", name="Download the .ovpn file of g0001").click()
        assert download.value.suggested_filename == "g0001.ovpn"
        assert Path(download.value.path()).read_bytes() == OVPN
        assert g2.get_by_role("button", name="Download the .ovpn file of g0002").is_disabled()
        assert problems == []
    finally:
        context.close()


def test_it_reads_well_on_a_phone(browser: Any, site: tuple[ApiEnv, str]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token(OWNER), viewport=(390, 844))
    try:
        row(page, "servers", "g0001").locator(".badge").filter(has_text="Running").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        # each cell names its column when the table is stacked
        assert row(page, "servers", "g0001").locator("td").first.get_attribute("data-label") == "Status"
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        assert problems == []
    finally:
        context.close()


def test_it_invites_a_customer_without_servers_to_the_store(browser: Any, site: tuple[ApiEnv, str]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token("carol@example.com"))
    try:
        page.get_by_text("You haven't subscribed to any plans. Purchase The VPS VPN so that we can build it for "
                         "you!").wait_for()
        assert page.get_by_role("link", name="See the plans").get_attribute("href") == f"{STOREFRONT}/pricing"
        assert page.locator("#servers-section").is_hidden()
        page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"))
        assert problems == []
    finally:
        context.close()


def test_it_speaks_german_to_a_german_browser(browser: Any, site: tuple[ApiEnv, str]) -> None:
    env, url = site
    context, page, problems = open_page(browser, url, env.token(OWNER), locale="de-DE")
    try:
        row(page, "servers", "g0001").locator(".badge").filter(has_text="Läuft").wait_for()
        assert page.get_by_role("heading", name="VPN-Server", exact=True).is_visible()
        assert page.get_by_role("heading", name="Neuaufbau-Planer").is_visible()
        assert page.evaluate("document.documentElement.lang") == "de"
        assert row(page, "servers", "g0002").get_by_text("Das VPN wird installiert").is_visible()
        assert "123\u00a0GB von 1\u00a0TB (12\u00a0%)" in row(page, "servers", "g0001").inner_text()
        row(page, "servers", "g0001").get_by_role("button", name="g0001 neu aufbauen").click()
        assert page.get_by_role("button", name="Jetzt neu aufbauen").is_visible()
        page.screenshot(path=str(ARTIFACTS / "dashboard-de.png"), full_page=True)
        assert problems == []
    finally:
        context.close()


@pytest.mark.parametrize("token", ["expired", "none"])
def test_it_says_the_session_expired_on_401(browser: Any, site: tuple[ApiEnv, str], token: str) -> None:
    env, url = site
    minted = env.token(OWNER, now=env.clock.now.replace(year=2024)) if token == "expired" else None
    context, page, problems = open_page(browser, url, minted)
    try:
        page.get_by_role("heading", name="Session expired").wait_for()
        assert page.get_by_role("link", name="Go to the store").get_attribute("href") == f"{STOREFRONT}/pricing"
        assert page.evaluate("sessionStorage.getItem('provisioner.token')") is None
        # the only console error allowed is the browser's own report of the 401 response
        assert all("401" in p for p in problems), problems
    finally:
        context.close()
