"""Settings: one TOML file, environment overrides, secrets from files, strict validation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from provisioner.settings import ConfigError, load_settings
from provisioner.settings.schema import SECTIONS, Product
from tests.fixtures.config import ROOT, write_config


def test_it_loads_the_embedded_default(tmp_path: Path) -> None:
    s = load_settings(write_config(tmp_path), env={})
    assert s.sandbox.enabled is True
    assert s.products["1"].regions[0] == "ewr"
    assert s.products["1"].bandwidth_cap_bytes == 1000 * 10**9


def test_it_names_a_misspelled_key_and_suggests_the_right_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, vultr={"requests_per_secnod": 10})
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    msg = str(err.value)
    assert msg.startswith("vultr.requests_per_secnod: unknown key")
    assert "did you mean 'requests_per_second'" in msg
    assert "\n" not in msg


def test_it_rejects_a_bad_value_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, cloudflare={"ttl": 5})
    with pytest.raises(ConfigError, match=r"^cloudflare\.ttl: must be at least 60, got 5$"):
        load_settings(cfg, env={})


def test_it_rejects_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, planner={"max_destroy_count": "lots"})
    with pytest.raises(ConfigError, match=r"^planner\.max_destroy_count: must be int, got 'lots'"):
        load_settings(cfg, env={})


def test_it_never_shows_a_secret_value_in_an_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, vultr={"api_key": 12345678})
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert "12345678" not in str(err.value)
    assert "vultr.api_key" in str(err.value)


def test_it_stops_on_a_missing_secret_and_says_where_to_put_it(tmp_path: Path) -> None:
    text = write_config(tmp_path).read_text().replace('api_key = "sandbox-vultr-token"\n', "")
    cfg = write_config(tmp_path, text=text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value) == ("vultr.api_key: required but not set; set vultr.api_key in the config file or "
                              "PROVISIONER_VULTR_API_KEY (or PROVISIONER_VULTR_API_KEY_FILE)")


def test_it_takes_environment_overrides_over_the_file(tmp_path: Path) -> None:
    env = {"PROVISIONER_VULTR_REQUESTS_PER_SECOND": "7.5", "PROVISIONER_SSH_PORT": "2200",
           "PROVISIONER_SANDBOX_ENABLED": "false", "PROVISIONER_VULTR_SSH_KEY_IDS": "a, b",
           "PROVISIONER_PRODUCTS_1_BANDWIDTH_CAP_GB": "2000",
           "PROVISIONER_NOTIFY_WEBHOOK_URL": "https://ops.example.com/alerts"}
    s = load_settings(write_config(tmp_path), env=env)
    assert s.vultr.requests_per_second == 7.5
    assert s.ssh.port == 2200
    assert s.sandbox.enabled is False
    assert s.vultr.ssh_key_ids == ["a", "b"]
    assert s.products["1"].bandwidth_cap_gb == 2000


def test_it_rejects_a_malformed_environment_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ssh\.port: PROVISIONER_SSH_PORT must be a whole number, got 'x'$"):
        load_settings(write_config(tmp_path), env={"PROVISIONER_SSH_PORT": "x"})


def test_it_reads_secrets_from_files_and_systemd_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "vultr").write_text("from-credential\n")
    keyfile = tmp_path / "fernet.keys"
    keyfile.write_text("# rotation in progress\n" + "A" * 43 + "=\n" + "B" * 43 + "=\n")
    text = write_config(tmp_path).read_text().replace('api_key = "sandbox-vultr-token"', 'api_key_file = "%d/vultr"')
    cfg = write_config(tmp_path, text=text)
    env = {"CREDENTIALS_DIRECTORY": str(creds), "PROVISIONER_SECRETS_FERNET_KEYS_FILE": str(keyfile)}
    s = load_settings(cfg, env=env)
    assert s.vultr.api_key == "from-credential"
    assert s.secrets.fernet_keys == ["A" * 43 + "=", "B" * 43 + "="]
    assert "from-credential" not in repr(s)


def test_it_reports_a_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cloudflare\.api_token: secret file /nonexistent/tok not found"):
        load_settings(write_config(tmp_path), env={"PROVISIONER_CLOUDFLARE_API_TOKEN_FILE": "/nonexistent/tok"})


def test_it_rejects_a_product_whose_default_region_is_not_offered(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, products={"1": {"default_region": "sjc"}})
    with pytest.raises(ConfigError, match=r"^products\.1\.default_region: 'sjc' is not in its regions$"):
        load_settings(cfg, env={})


def test_it_rejects_an_unknown_product_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, products={"1": {"bandwith_cap_gb": 5}})
    with pytest.raises(ConfigError, match=r"^products\.1\.bandwith_cap_gb: unknown key"):
        load_settings(cfg, env={})


def test_a_product_offers_openvpn_unless_it_names_its_protocols(tmp_path: Path) -> None:
    s = load_settings(write_config(tmp_path, products={"2": {"plan": "vc2-1c-1gb", "regions": ["ewr"],
                                                              "default_region": "ewr",
                                                              "protocols": ["wireguard", "openvpn"]},
                                                        "3": {"plan": "vc2-1c-1gb", "regions": ["ewr"],
                                                              "default_region": "ewr", "protocols": ["wireguard"]}}),
                      env={})
    assert s.products["1"].protocols == ("openvpn",)
    assert s.products["2"].protocols == ("openvpn", "wireguard")   # install order, whatever the file's
    assert s.products["3"].protocols == ("wireguard",) and not s.products["3"].offers("openvpn")


@pytest.mark.parametrize(("protocols", "message"), [
    ([], r"^products\.1\.protocols: must name at least one protocol: \"openvpn\", \"wireguard\"$"),
    (["openvpn", "ipsec"], r"^products\.1\.protocols: unknown protocol 'ipsec'; known: \"openvpn\", \"wireguard\"$"),
    (["WireGuard"], r"^products\.1\.protocols: unknown protocol 'WireGuard'"),
    (["wireguard", "wireguard"], r"^products\.1\.protocols: names a protocol twice; list each once$"),
    ("wireguard", r"^products\.1\.protocols: must be a list of strings, got 'wireguard'$"),
])
def test_it_rejects_protocols_that_are_unknown_empty_or_repeated(tmp_path: Path, protocols: object,
                                                                  message: str) -> None:
    cfg = write_config(tmp_path, products={"1": {"protocols": protocols}})
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, env={})


def test_it_reports_invalid_toml_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, text="[vultr\napi_key = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert "is not valid TOML" in str(err.value)


def _documented_keys(text: str) -> set[str]:
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[([a-z_]+)\]", line):
            section = m.group(1)
        elif line.startswith("[products."):
            section = "products"
        elif m := re.match(r"^([a-z_]+) =", line):
            key = m.group(1)
            base = key.removesuffix("_file")
            if key != base and section in SECTIONS and SECTIONS[section].get(base, None) is not None \
                    and SECTIONS[section][base].secret:
                key = base
            keys.add(f"{section}.{key}")
    return keys


def test_it_documents_every_key_in_the_example_and_no_other() -> None:
    text = (ROOT / "config" / "provisioner.example.toml").read_text()
    expected = {f"{sec}.{key}" for sec, fields in SECTIONS.items() for key in fields}
    expected |= {f"products.{key}" for key in Product.FIELDS}
    assert _documented_keys(text) == expected
    tomllib.loads(text)  # and it parses


def test_it_loads_the_example_once_its_secrets_are_provided(tmp_path: Path) -> None:
    text = (ROOT / "config" / "provisioner.example.toml").read_text()
    for name in ("edd_url", "fernet_keys", "api_key", "api_token", "jwt_secret"):
        text = re.sub(rf"^{name}_file = .*$", "", text, flags=re.M)
    cfg = write_config(tmp_path, text=text)
    env = {"PROVISIONER_STOREFRONT_EDD_URL": "mysql+pymysql://wp@127.0.0.1/wp",
           "PROVISIONER_SECRETS_FERNET_KEYS": "[\"" + "A" * 43 + "=\"]",
           "PROVISIONER_VULTR_API_KEY": "k", "PROVISIONER_CLOUDFLARE_API_TOKEN": "t"}
    # Until an operator channel is set, the example refuses to start: alerts would land nowhere
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env=env)
    assert str(err.value).startswith("notify.operator_email (with notify.smtp_host) or notify.webhook_url: ")
    assert "\n" not in str(err.value)
    s = load_settings(cfg, env={**env, "PROVISIONER_NOTIFY_OPERATOR_EMAIL": "ops@example.com",
                                "PROVISIONER_NOTIFY_SMTP_HOST": "smtp.example.com"})
    assert s.storefront.kind == "edd"
    assert s.products["123"].cap_policy == "notify"
    assert s.notify.operator_channel


def test_an_operator_address_without_an_smtp_server_is_no_channel(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sandbox={"enabled": False}, notify={"operator_email": "ops@example.com"})
    with pytest.raises(ConfigError, match=r"^notify\.operator_email \(with notify\.smtp_host\)"):
        load_settings(cfg, env={})
    assert load_settings(cfg, env={"PROVISIONER_NOTIFY_SMTP_HOST": "smtp.example.com"}).notify.operator_channel


def test_the_sandbox_needs_no_operator_channel(tmp_path: Path) -> None:
    assert not load_settings(write_config(tmp_path), env={}).notify.operator_channel


@pytest.mark.parametrize(("name", "hint"), [("PROVISIONER_VULTR_APIKEY", "PROVISIONER_VULTR_API_KEY"),
                                            ("PROVISIONER_PRODUCTS_99_PLAN", ""),
                                            ("PROVISIONER_DEBUG", "")])
def test_an_unknown_provisioner_variable_is_a_config_error_naming_it(tmp_path: Path, name: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path), env={name: "1"})
    message = str(err.value)
    assert message.startswith(f"{name}: unknown environment variable") and "\n" not in message
    assert hint in message


def test_known_variables_that_are_not_settings_pass(tmp_path: Path) -> None:
    env = {"PROVISIONER_CONFIG": "x", "PROVISIONER_TEST_MYSQL_URL": "y", "PROVISIONER_CRASH_AT": "create.boot",
           "PROVISIONER_VULTR_API_KEY_FILE": str(tmp_path / "k"), "PROVISIONER_PRODUCTS_1_PLAN": "vc2-2c-4gb"}
    (tmp_path / "k").write_text("key")
    assert load_settings(write_config(tmp_path), env=env).products["1"].plan == "vc2-2c-4gb"
