"""Settings: one TOML file, every key overridable from the environment.

Where a value comes from, in order of precedence:

1. ``PROVISIONER_<SECTION>_<KEY>`` environment variable (``PROVISIONER_VULTR_API_KEY``;
   product keys as ``PROVISIONER_PRODUCTS_<ID>_<KEY>``),
2. for secrets, ``PROVISIONER_<SECTION>_<KEY>_FILE`` (systemd ``LoadCredential=``), then
   ``<key>_file`` in the TOML file (relative paths are taken from the working directory;
   ``%d/name`` means ``$CREDENTIALS_DIRECTORY/name``; a list secret holds one value a line),
3. the TOML file (path from ``--config`` or ``PROVISIONER_CONFIG``),
4. the default in :mod:`provisioner.settings.schema`.

Everything is validated before anything runs: an unknown key, a bad value or a missing
secret raises :class:`ConfigError` with one line that names the key and how to fix it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provisioner.settings import schema
from provisioner.settings.schema import SECTIONS, ConfigError, Field, Product, Settings

ENV_PREFIX = "PROVISIONER_"
# Variables of ours that are not settings: the config file's path, and test-only switches.
NOT_SETTINGS = frozenset({"PROVISIONER_CONFIG", "PROVISIONER_CRASH_AT", "PROVISIONER_TEST_MYSQL_URL"})


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found: pass --config or set PROVISIONER_CONFIG") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from None
    return _build(raw, env, source=str(path) if path else "(defaults)")


def _build(raw: dict[str, Any], env: Mapping[str, str], source: str) -> Settings:
    unknown = sorted(set(raw) - set(SECTIONS) - {"products"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section in {source}; known: {', '.join(sorted(SECTIONS))}, products")
    raw = _apply_port_base(raw, env)
    sections: dict[str, Any] = {}
    for name, fields in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: must be a table ([{name}]) in {source}")
        sections[name] = _section(name, fields, table, env)
    products = _products(raw.get("products", {}), env)
    _unknown_variables(env, products)
    settings = Settings(source=source, products=products, **sections)
    _cross_checks(settings)
    return settings


def _unknown_variables(env: Mapping[str, str], products: Mapping[str, Product]) -> None:
    """A misspelled PROVISIONER_* variable is an error, like a misspelled key in the file."""
    known = set(NOT_SETTINGS)
    for name, fields in SECTIONS.items():
        for key, field in fields.items():
            known.add(f"{ENV_PREFIX}{name}_{key}".upper())
            if field.secret:
                known.add(f"{ENV_PREFIX}{name}_{key}_FILE".upper())
    for pid in products:
        known |= {_product_env(pid, key) for key in Product.FIELDS}
    unknown = sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known)
    if unknown:
        hint = _did_you_mean(unknown[0], known)
        raise ConfigError(f"{unknown[0]}: unknown environment variable{hint}; unset it "
                          "(config/provisioner.example.toml lists every setting)")


def _product_env(pid: str, key: str) -> str:
    return f"{ENV_PREFIX}PRODUCTS_{re.sub(r'[^A-Za-z0-9]', '_', pid)}_{key}".upper()


def _section(name: str, fields: dict[str, Field], table: dict[str, Any], env: Mapping[str, str]) -> Any:
    allowed = set(fields) | {f"{k}_file" for k, f in fields.items() if f.secret}
    for key in table:
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            raise ConfigError(f"{name}.{key}: unknown key{hint}; see config/provisioner.example.toml")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        dotted = f"{name}.{key}"
        env_name = f"{ENV_PREFIX}{name}_{key}".upper()
        value: Any = dataclasses.MISSING
        if env_name in env:
            value = _from_env(dotted, env_name, env[env_name], field)
        elif field.secret and f"{env_name}_FILE" in env:
            value = _read_secret_file(dotted, env[f"{env_name}_FILE"], env, field)
        elif key in table:
            value = table[key]
        elif field.secret and f"{key}_file" in table:
            value = _read_secret_file(dotted, str(table[f"{key}_file"]), env, field)
        if value is dataclasses.MISSING:
            value = field.default
        values[key] = field.check(dotted, value, env_name)
    return fields_to_section(name, values)


def sandbox_ports(base: int) -> dict[tuple[str, str], Any]:
    """What ``sandbox.port_base`` sets: every port of the demo, and every URL that names one."""
    api = f"http://127.0.0.1:{base + 3}"
    return {("sandbox", "vultr_port"): base, ("sandbox", "cloudflare_port"): base + 1,
            ("sandbox", "admin_port"): base + 2, ("api", "listen_port"): base + 3, ("ssh", "port"): base + 4,
            ("sandbox", "smtp_port"): base + 5, ("notify", "smtp_port"): base + 5,
            ("worker", "metrics_port"): base + 6,
            ("vultr", "base_url"): f"http://127.0.0.1:{base}/v2",
            ("cloudflare", "base_url"): f"http://127.0.0.1:{base + 1}/client/v4",
            ("api", "public_url"): api, ("api", "cors_origin"): api, ("storefront", "url"): f"{api}/#pricing"}


def _apply_port_base(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """With ``sandbox.port_base`` set, the ports and URLs it derives become the values of the keys
    the file and the environment leave unset (one setting moves the whole demo)."""
    sandbox = raw.get("sandbox", {})
    if not isinstance(sandbox, dict):
        return raw  # reported by _section
    name = f"{ENV_PREFIX}SANDBOX_PORT_BASE"
    field = SECTIONS["sandbox"]["port_base"]
    text = env.get(name)
    base = field.check("sandbox.port_base", _from_env("sandbox.port_base", name, text, field) if text is not None
                       else sandbox.get("port_base", 0), name)
    if not base:
        return raw
    enabled_env = f"{ENV_PREFIX}SANDBOX_ENABLED"
    enabled = sandbox.get("enabled") if enabled_env not in env else \
        _from_env("sandbox.enabled", enabled_env, env[enabled_env], Field(bool))
    if not enabled:
        return raw  # not a sandbox config: like the rest of [sandbox], the setting does nothing
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for (section, key), value in sandbox_ports(base).items():
        table = out.setdefault(section, {})
        if isinstance(table, dict) and key not in table and f"{ENV_PREFIX}{section}_{key}".upper() not in env:
            table[key] = value
    return out


def fields_to_section(name: str, values: dict[str, Any]) -> Any:
    cls = getattr(schema, name.capitalize() + "Settings")
    return cls(**values)


def _products(table: Any, env: Mapping[str, str]) -> dict[str, Product]:
    if not isinstance(table, dict):
        raise ConfigError("products: must be tables like [products.\"123\"]")
    products: dict[str, Product] = {}
    for pid, spec in table.items():
        if not re.fullmatch(r"[A-Za-z0-9_:.\-]{1,64}", pid):
            raise ConfigError(f"products.{pid}: a product id may only hold letters, digits and _ : . -")
        if not isinstance(spec, dict):
            raise ConfigError(f"products.{pid}: must be a table")
        spec = dict(spec)
        for key in Product.FIELDS:
            env_name = _product_env(pid, key)
            if env_name in env:
                spec[key] = _from_env(f"products.{pid}.{key}", env_name, env[env_name], Product.FIELDS[key])
        products[pid] = Product.from_table(pid, spec, ConfigError)
    return products


def _from_env(dotted: str, env_name: str, text: str, field: Field) -> Any:
    kind = field.kind
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{dotted}: {env_name} must be true or false, got {text!r}")
    if kind is list:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError:
                raise ConfigError(f"{dotted}: {env_name} is not a JSON list") from None
        return [part.strip() for part in stripped.split(",") if part.strip()]
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{dotted}: {env_name} must be a whole number, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{dotted}: {env_name} must be a number, got {text!r}") from None
    return text


def _read_secret_file(dotted: str, path_text: str, env: Mapping[str, str], field: Field) -> str | list[str]:
    if path_text.startswith("%d/"):
        creds = env.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(f"{dotted}: {path_text} names a systemd credential but CREDENTIALS_DIRECTORY is unset")
        path = Path(creds) / path_text[3:]
    else:
        path = Path(path_text)  # relative paths are relative to the working directory
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{dotted}: secret file {path} not found (create it, or run `provisioner keygen`)") from None
    except OSError as exc:
        raise ConfigError(f"{dotted}: secret file {path} cannot be read: {exc.strerror}") from None
    if field.kind is list:  # one value per line (several Fernet keys during a rotation)
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return text


def _cross_checks(s: Settings) -> None:
    if s.storefront.kind == "edd" and not s.storefront.edd_url:
        raise ConfigError("storefront.edd_url: required when storefront.kind = \"edd\" "
                          "(set it, its _file, or PROVISIONER_STOREFRONT_EDD_URL)")
    if not s.secrets.fernet_keys:
        raise ConfigError("secrets.fernet_keys: at least one key is required; make one with `provisioner keygen`")
    for pid, product in s.products.items():
        if product.default_region not in product.regions:
            raise ConfigError(f"products.{pid}.default_region: {product.default_region!r} is not in its regions")
    if not s.sandbox.enabled and not s.notify.operator_channel:
        raise ConfigError("notify.operator_email (with notify.smtp_host) or notify.webhook_url: a production config "
                          "needs an operator channel, or alerts (needs attention, held destroys) land nowhere; "
                          "set one of them")


def _did_you_mean(key: str, allowed: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
