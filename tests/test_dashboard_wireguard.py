"""The page of a WireGuard plan's server, in headless Chromium: each device's .conf download and QR
code, the short guide, and after a rebuild the notice to switch the tunnel off and on once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.models import Status
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ApiEnv, build_env, live_server
from tests.fixtures.browser import ARTIFACTS, DESKTOP, PHONE, open_page

pytestmark = pytest.mark.slow

WIDTHS = [pytest.param(DESKTOP, id="desktop"), pytest.param(PHONE, id="phone")]


@pytest.fixture
def wg_site(tmp_path: Path, api_db_template: Path) -> Iterator[tuple[ApiEnv, str]]:
    """alice's g0001 of a plan with both protocols, rebuilt an hour ago; g0002 of the same plan, installing."""
    env = build_env(tmp_path, template=api_db_template,
                    sections={"products": {"1": {"protocols": ["openvpn", "wireguard"]}}})
    env.add_server(OWNER, "g0001", current_location="ams",
                   last_rebuilt_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    env.add_server(OWNER, "g0002", status=Status.INSTALLING.value, ovpn=None, server_ip=None, action="create",
                   step="install", last_rebuilt_at=None, current_location=None)
    env.give_vpn("g0001", ovpn=True)
    with live_server(env.api) as url:
        yield env, url
    env.app.engine.dispose()


def panel(page: Any, short: str = "g0001") -> Any:
    return page.locator(f'.server-panel[data-key="{short}.vpn.example.test"]')


@pytest.mark.parametrize("viewport", WIDTHS)
def test_a_wireguard_device_has_its_conf_its_qr_code_and_a_guide(browser: Any, wg_site: tuple[ApiEnv, str],
                                                                 viewport: tuple[int, int]) -> None:
    env, url = wg_site
    context, page, problems = open_page(browser, url, env.token(OWNER, ttl=3600), viewport=viewport)
    try:
        g1 = panel(page)
        g1.locator(".device-list").get_by_text("Device 1").wait_for()
        # Both profiles of device 1, and the guide for the WireGuard apps
        assert g1.get_by_role("button", name="Download the .ovpn profile of Device 1").is_visible()
        with page.expect_download() as download:
            g1.get_by_role("button", name="Download the WireGuard configuration of Device 1").click()
        assert download.value.suggested_filename == "g0001-1.conf"
        conf = Path(download.value.path()).read_text()
        assert "Endpoint = g0001.vpn.example.test:51820" in conf
        g1.get_by_text("How to connect with WireGuard").click()
        assert g1.get_by_text("scan the device's QR code").is_visible()
        # The rebuild an hour ago: switch the tunnel off and on once
        notice = g1.locator(".wg-rebuilt")
        assert notice.is_visible() and "switch the WireGuard tunnel off and on once" in notice.inner_text()
        # The QR code on demand, labelled for screen readers, gone again when hidden
        g1.get_by_role("button", name="Show the WireGuard QR code of Device 1").click()
        code = g1.get_by_role("img", name="WireGuard configuration g0001-1.conf")
        code.wait_for()
        assert code.locator("path").count() >= 1
        box = code.bounding_box()
        assert box is not None and 100 <= box["width"] <= viewport[0]
        page.screenshot(path=str(ARTIFACTS / f"wireguard-device-{'desktop' if viewport == DESKTOP else 'phone'}.png"),
                        full_page=True)
        g1.get_by_role("button", name="Hide the WireGuard QR code of Device 1").click()
        assert g1.locator(".wg-qr").count() == 0
        # A new device gets both profiles too
        g1.get_by_label("New device name").fill("Phone")
        g1.get_by_role("button", name="Add device").click()
        g1.get_by_role("button", name="Download the WireGuard configuration of Phone").wait_for()
        assert problems == []
    finally:
        context.close()
