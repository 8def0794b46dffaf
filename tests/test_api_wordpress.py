"""The WordPress plugin: it lints, and the tokens its PHP mints are accepted by the Python API.
Needs the PHP CLI (Debian package php-cli): skipped locally without it, required in CI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dashboard_api.tokens import verify_token
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ApiEnv
from tests.fixtures.services import require_or_skip

PLUGIN = Path(__file__).resolve().parents[1] / "wordpress" / "provisioner-dashboard"
PHP_FILES = sorted(PLUGIN.rglob("*.php"))


@pytest.fixture(scope="module")
def php() -> str:
    path = shutil.which("php")
    if path is None:
        require_or_skip("php not installed (apt-get install php-cli)")
    assert path is not None
    return path


def run_php(php: str, code: str) -> str:
    out = subprocess.run([php, "-d", "display_errors=stderr", "-r", code], capture_output=True, text=True,
                         timeout=30, cwd=PLUGIN, check=False)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


@pytest.mark.parametrize("path", PHP_FILES, ids=[str(p.relative_to(PLUGIN)) for p in PHP_FILES])
def test_it_lints_the_plugin(php: str, path: Path) -> None:
    out = subprocess.run([php, "-l", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def mint_in_php(php: str, email: str, user_id: str, audience: str, secret: str, now: int, ttl: int) -> str:
    def lit(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return run_php(php, f"define('ABSPATH', '/'); require 'includes/jwt.php'; echo provisioner_dashboard_mint_token("
                        f"{lit(email)}, {lit(user_id)}, {lit(audience)}, {lit(secret)}, {now}, {ttl});").strip()


def test_it_accepts_a_token_minted_by_the_plugin(php: str, api_env: ApiEnv) -> None:
    # Given a token minted by the plugin's PHP with the API's secret and audience (15 minutes)
    s = api_env.settings.api
    now = int(api_env.clock.now.timestamp())
    token = mint_in_php(php, OWNER, "1", s.jwt_audience, s.jwt_secret, now, 900)

    # Then the API accepts it and shows that WordPress user's servers
    who = verify_token(token, s.jwt_secret, s.jwt_audience, api_env.clock.now)
    assert (who.email, who.user_id) == (OWNER, "1")
    r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and sorted(x["short_name"] for x in r.json()) == ["g0001", "g0002"]


def test_it_refuses_plugin_tokens_with_another_secret_or_audience(php: str, api_env: ApiEnv) -> None:
    s = api_env.settings.api
    now = int(api_env.clock.now.timestamp())
    for token in (mint_in_php(php, OWNER, "17", s.jwt_audience, "another-secret-0123456789abcdef0123", now, 900),
                  mint_in_php(php, OWNER, "17", "another-audience", s.jwt_secret, now, 900)):
        r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401


def test_it_caps_the_plugins_token_life_at_one_hour(php: str, api_env: ApiEnv) -> None:
    s = api_env.settings.api
    now = int(api_env.clock.now.timestamp())
    token = mint_in_php(php, OWNER, "17", s.jwt_audience, s.jwt_secret, now, 86400)
    assert verify_token(token, s.jwt_secret, s.jwt_audience, api_env.clock.now).email == OWNER


def test_it_keeps_the_secret_out_of_the_options_table() -> None:
    source = (PLUGIN / "provisioner-dashboard.php").read_text(encoding="utf-8")
    assert "PROVISIONER_JWT_SECRET" in source
    assert not any(word in source for word in ("update_option( 'provisioner_dashboard_secret",
                                                 "get_option( 'provisioner_dashboard_secret"))
    assert "manage_options" in source and "settings_fields(" in source  # capability + nonce
