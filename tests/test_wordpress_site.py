"""The plugin inside a real WordPress: Debian's wordpress package on PHP's built-in server and
MariaDB, installed by WordPress's installer (tests/fixtures/wordpress.py); EDD-shaped tables
in the same database; the dashboard API started as the other API tests start it; chromium.

A customer signs in to WordPress, opens the page holding [provisioner_dashboard], and sees
their own servers through the API -- not another customer's.  The storefront reader reads
that WordPress's own users, and its time zone from wp_options.

Screenshot of the shortcode page: test-artifacts/wordpress-dashboard.png (gitignored).
Needs wordpress, php-cli, php-mysql, MariaDB, chromium and playwright: skipped locally when
one is missing, required under CI=true.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from provisioner.db import make_engine
from provisioner.models import Status
from provisioner.storefront.edd import EddStorefront, utc_to_site_local
from provisioner.storefront.eddschema import create_edd_tables, insert_customer, insert_subscription
from provisioner.subscriptions import Subscription
from tests.fixtures.api import ApiEnv, build_env, live_server
from tests.fixtures.browser import ARTIFACTS, loopback_only
from tests.fixtures.wordpress import WordPressSite, WordPressUser

# one worker under -n: the module's tests share one installed WordPress, set up once
pytestmark = [pytest.mark.slow, pytest.mark.mysql, pytest.mark.xdist_group("wordpress_site")]

TIMEOUT_MS = 15_000
SITE_ZONE = "Pacific/Auckland"   # half a day from UTC: reading the site's zone or not shows
PRODUCT = 1                      # the demo product of config/sandbox.toml
ALICE = WordPressUser("alice", "alice@example.com", "alice-Passw0rd-1")
BOB = WordPressUser("bob", "bob@example.com", "bob-Passw0rd-2")
CAROL = WordPressUser("carol", "carol@example.com", "carol-Passw0rd-3")
DOMAIN = "vpn.example.test"


@dataclass
class Shop:
    site: WordPressSite
    page_url: str
    users: dict[str, WordPressUser]
    subscriptions: list[Subscription]
    env: ApiEnv
    api_url: str


def add_edd_rows(site: WordPressSite, users: dict[str, WordPressUser], now: dt.datetime) -> None:
    """EDD customers tied to the WordPress users, and one subscription each, in the site's database.

    Alice's EDD customer row keeps an old address: the reader must take the WordPress user's.
    Carol's expiration is two hours ahead *in UTC wall-clock terms*, which in Auckland's time
    is long past: entitled only if the reader ignored the site's time zone.
    """
    zone = ZoneInfo(SITE_ZONE)
    engine = make_engine(site.database_url)
    try:
        create_edd_tables(engine, "wp_")   # wp_users and wp_options are WordPress's own, already there
        with engine.begin() as conn:
            for user, email, expiration in (
                    (users["alice"], "alice.old@example.com", utc_to_site_local(now + dt.timedelta(days=30), zone)),
                    (users["bob"], users["bob"].email, utc_to_site_local(now + dt.timedelta(days=30), zone)),
                    (users["carol"], users["carol"].email, (now + dt.timedelta(hours=2)).replace(tzinfo=None))):
                customer = insert_customer(conn, "wp_", email=email, user_id=user.id, name=user.login)
                insert_subscription(conn, "wp_", customer_id=customer, product_id=PRODUCT, status="active",
                                    expiration=expiration)
    finally:
        engine.dispose()


def read_storefront(site: WordPressSite, now: dt.datetime) -> list[Subscription]:
    engine = make_engine(site.database_url)
    try:
        return EddStorefront(engine, "wp_").read(now)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def shop(wordpress_site: WordPressSite, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    site = wordpress_site
    made, page_url = site.setup(timezone=SITE_ZONE, users=[ALICE, BOB, CAROL])
    users = {u.login: u for u in made}
    now = dt.datetime.now(dt.UTC)
    add_edd_rows(site, users, now)
    subscriptions = read_storefront(site, now)

    # The API on the same database (its provisioner_* tables beside WordPress's), trusting the
    # site's secret and letting the site frame it; servers for whoever the storefront entitles
    env = build_env(tmp_path_factory.mktemp("api"), database_url=site.database_url, jwt_secret=site.jwt_secret,
                    cors_origin=site.url)
    env.clock.now = now   # the plugin signs with the real time
    entitled = {s.email for s in subscriptions if s.entitled(now)}
    # (each row carries its WordPress user id, the account the plugin's token names)
    alice, bob = str(users["alice"].id), str(users["bob"].id)
    if "alice@example.com" in entitled:
        env.add_server("alice@example.com", "g0001", current_location="lhr", account_id=alice)
        env.add_server("alice@example.com", "g0002", status=Status.INSTALLING.value, ovpn=None, server_ip=None,
                       action="create", step="install", last_rebuilt_at=None, account_id=alice)
    if "bob@example.com" in entitled:
        env.add_server("bob@example.com", "g0003", current_location="ams", account_id=bob)
    with live_server(env.api) as api_url:
        configure_plugin(browser, site, api_url)
        yield Shop(site, page_url, users, subscriptions, env, api_url)
    env.app.engine.dispose()


def open_context(browser: Any) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(locale="en-US", viewport={"width": 1100, "height": 900}, service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    loopback_only(context)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    # (requests to other hosts, such as Gravatar, are refused by loopback_only and not counted)
    return context, page, problems


def sign_in(page: Any, site: WordPressSite, user: WordPressUser) -> None:
    page.goto(f"{site.url}/wp-login.php")
    page.locator("#user_login").fill(user.login)
    page.locator("#user_pass").fill(user.password)
    page.locator("#wp-submit").click()
    page.wait_for_url("**/wp-admin/**")


def configure_plugin(browser: Any, site: WordPressSite, api_url: str) -> None:
    """The shop's administrator sets the API URL under Settings -> Provisioner."""
    context, page, problems = open_context(browser)
    try:
        sign_in(page, site, site.admin)
        page.goto(f"{site.url}/wp-admin/options-general.php?page=provisioner-dashboard")
        assert page.locator(".notice-warning").count() == 0   # the secret is in wp-config.php
        page.locator("#provisioner-dashboard-url").fill(api_url + "/")
        page.locator("#submit").click()
        page.get_by_text("Settings saved.").wait_for()
        assert page.locator("#provisioner-dashboard-url").input_value() == api_url   # trailing slash trimmed
        assert problems == []
    finally:
        context.close()


def dashboard_rows(page: Any) -> Any:
    frame = page.frame_locator("iframe.provisioner-dashboard")
    return frame, frame.locator("#servers tbody tr")


def test_it_reads_the_sites_own_users_and_time_zone(shop: Shop) -> None:
    now = dt.datetime.now(dt.UTC)
    by_user = {s.user_id: s for s in shop.subscriptions}
    alice, bob, carol = (by_user[shop.users[n].id] for n in ("alice", "bob", "carol"))
    # The WordPress user's address wins over the one EDD's customer row kept
    assert (alice.email, bob.email) == ("alice@example.com", "bob@example.com")
    assert alice.entitled(now) and bob.entitled(now)
    # Carol's expiration is Auckland time (wp_options.timezone_string): it has passed
    assert not carol.entitled(now)


def test_a_customer_sees_their_servers_and_not_anothers(browser: Any, shop: Shop) -> None:
    context, page, problems = open_context(browser)
    try:
        # Given alice signed in to WordPress
        sign_in(page, shop.site, shop.users["alice"])
        # When she opens the page holding [provisioner_dashboard] (never cached: it holds her token;
        # WordPress itself sends no-cache to signed-in users, and the plugin asks again)
        reply = page.goto(shop.page_url)
        assert "no-cache" in reply.headers.get("cache-control", "")
        frame, rows = dashboard_rows(page)
        g1 = frame.locator(f'#servers tbody tr[data-key="g0001.{DOMAIN}"]')
        g1.locator(".badge").filter(has_text="Running").wait_for()
        # Then her two servers are there, through the API, and bob's is not
        assert rows.count() == 2
        assert "Installing" in frame.locator(f'#servers tbody tr[data-key="g0002.{DOMAIN}"]').inner_text()
        assert "g0003" not in frame.locator("#servers").inner_text()
        assert page.locator("iframe.provisioner-dashboard").get_attribute("src").startswith(shop.api_url + "/#token=")
        # and the plugin's embed.js has sized the frame to the page inside (its message was accepted)
        page.wait_for_function("document.querySelector('iframe.provisioner-dashboard').style.height.endsWith('px')")
        page.screenshot(path=str(ARTIFACTS / "wordpress-dashboard.png"), full_page=True)
        assert problems == []
    finally:
        context.close()

    context, page, problems = open_context(browser)
    try:
        # And bob, on the same page, sees only his own
        sign_in(page, shop.site, shop.users["bob"])
        page.goto(shop.page_url)
        frame, rows = dashboard_rows(page)
        frame.locator(f'#servers tbody tr[data-key="g0003.{DOMAIN}"] .badge').filter(has_text="Running").wait_for()
        assert rows.count() == 1
        assert "g0001" not in frame.locator("#servers").inner_text()
        assert problems == []
    finally:
        context.close()


def test_it_asks_a_visitor_to_log_in(browser: Any, shop: Shop) -> None:
    context, page, problems = open_context(browser)
    try:
        page.goto(shop.page_url)
        link = page.get_by_role("link", name="Log in to see your VPN servers.")
        assert "wp-login.php" in (link.get_attribute("href") or "")
        assert page.locator("iframe.provisioner-dashboard").count() == 0
        assert problems == []
    finally:
        context.close()


def test_the_plugin_raised_no_php_notice(shop: Shop) -> None:
    log = Path(shop.site.debug_log)
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    assert "provisioner-dashboard" not in text, text[-3000:]
