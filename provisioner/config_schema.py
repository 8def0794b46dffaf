"""Every configuration key: its type, default, bounds and whether it is a secret.

The documented copy for operators is ``config/provisioner.example.toml``; a test keeps the
two in step (every key here is documented there, and nothing more).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    kind: type
    default: Any = REQUIRED
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    allow_empty: bool = True

    def check(self, dotted: str, value: Any, env_name: str) -> Any:
        from provisioner.settings import ConfigError

        how = f"set {dotted} in the config file or {env_name}"
        if value is REQUIRED:
            if self.secret:
                how += f" (or {env_name}_FILE)"
            raise ConfigError(f"{dotted}: required but not set; {how}")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{dotted}: must be a list of strings, got {_show(value, self.secret)}")
        elif not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ConfigError(f"{dotted}: must be {self.kind.__name__}, got {_show(value, self.secret)}; {how}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{dotted}: must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{dotted}: must be at most {self.maximum}, got {value}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{dotted}: must be one of {', '.join(self.choices)}; got {value!r}")
        if self.pattern and isinstance(value, str) and value and not re.fullmatch(self.pattern, value):
            raise ConfigError(f"{dotted}: {_show(value, self.secret)} is not valid (expected {self.pattern})")
        if not self.allow_empty and not value:
            raise ConfigError(f"{dotted}: must not be empty; {how}")
        return value


def _show(value: Any, secret: bool) -> str:
    return "(a secret value, not shown)" if secret else repr(value)


SECTIONS: dict[str, dict[str, Field]] = {
    "database": {
        "url": Field(str, "sqlite:///var/provisioner.db", secret=True, allow_empty=False),
        "echo": Field(bool, False),
    },
    "storefront": {
        "kind": Field(str, "edd", choices=("edd", "stripe")),
        "edd_url": Field(str, "", secret=True),
        "edd_table_prefix": Field(str, "wp_", pattern=r"[A-Za-z0-9_]{1,32}"),
        "failing_grace_days": Field(float, 3.0, minimum=0, maximum=60),
        "site_timezone": Field(str, ""),
        "url": Field(str, "https://example.com/pricing"),
    },
    "secrets": {
        "fernet_keys": Field(list, REQUIRED, secret=True),
    },
    "vultr": {
        "api_key": Field(str, REQUIRED, secret=True, allow_empty=False),
        "base_url": Field(str, "https://api.vultr.com/v2", pattern=r"https?://\S+"),
        "requests_per_second": Field(float, 30.0, minimum=0.1, maximum=1000),
        "timeout_seconds": Field(float, 10.0, minimum=1, maximum=120),
        "tag": Field(str, "provisioner", pattern=r"[a-z0-9][a-z0-9\-]{0,31}"),
        "label_prefix": Field(str, "prov", pattern=r"[a-z0-9][a-z0-9\-]{0,15}"),
        "ssh_key_ids": Field(list, []),
    },
    "cloudflare": {
        "api_token": Field(str, REQUIRED, secret=True, allow_empty=False),
        "base_url": Field(str, "https://api.cloudflare.com/client/v4", pattern=r"https?://\S+"),
        "zone_id": Field(str, REQUIRED, pattern=r"[0-9a-f]{32}"),
        "domain": Field(str, REQUIRED, pattern=r"([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,63}"),
        "ttl": Field(int, 120, minimum=60, maximum=86400),
        "requests_per_window": Field(int, 1200, minimum=1),
        "window_seconds": Field(float, 300.0, minimum=1),
    },
    "ssh": {
        "private_key_file": Field(str, "/etc/provisioner/id_ed25519", allow_empty=False),
        "port": Field(int, 22, minimum=1, maximum=65535),
        "connect_timeout": Field(float, 20.0, minimum=1, maximum=600),
        "command_timeout": Field(float, 900.0, minimum=1, maximum=7200),
    },
    "planner": {
        "max_destroy_count": Field(int, 5, minimum=0),
        "max_destroy_fraction": Field(float, 0.1, minimum=0, maximum=1),
        "destroy_grace_hours": Field(float, 0.0, minimum=0, maximum=24 * 60),
        "server_name_prefix": Field(str, "g0", pattern=r"[a-z][a-z0-9\-]{0,15}"),
    },
    "sandbox": {
        "enabled": Field(bool, False),
        "state_file": Field(str, "var/sandbox-state.json"),
        "host_root": Field(str, "var/sandbox-hosts"),
        "vultr_port": Field(int, 18080, minimum=0, maximum=65535),
        "cloudflare_port": Field(int, 18081, minimum=0, maximum=65535),
        "admin_port": Field(int, 18082, minimum=0, maximum=65535),
        "boot_seconds": Field(float, 5.0, minimum=0, maximum=3600),
        "install_seconds": Field(float, 2.0, minimum=0, maximum=3600),
        "ip_pool": Field(str, "127.77.0.0/16", pattern=r"127\.\d+\.\d+\.\d+/\d+"),
    },
}


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(repr=False)
    echo: bool


@dataclass(frozen=True)
class StorefrontSettings:
    kind: str
    edd_url: str = field(repr=False)
    edd_table_prefix: str
    failing_grace_days: float
    site_timezone: str
    url: str


@dataclass(frozen=True)
class SecretsSettings:
    fernet_keys: list[str] = field(repr=False)


@dataclass(frozen=True)
class VultrSettings:
    api_key: str = field(repr=False)
    base_url: str
    requests_per_second: float
    timeout_seconds: float
    tag: str
    label_prefix: str
    ssh_key_ids: list[str]


@dataclass(frozen=True)
class CloudflareSettings:
    api_token: str = field(repr=False)
    base_url: str
    zone_id: str
    domain: str
    ttl: int
    requests_per_window: int
    window_seconds: float


@dataclass(frozen=True)
class SshSettings:
    private_key_file: str
    port: int
    connect_timeout: float
    command_timeout: float


@dataclass(frozen=True)
class PlannerSettings:
    max_destroy_count: int
    max_destroy_fraction: float
    destroy_grace_hours: float
    server_name_prefix: str


@dataclass(frozen=True)
class SandboxSettings:
    enabled: bool
    state_file: str
    host_root: str
    vultr_port: int
    cloudflare_port: int
    admin_port: int
    boot_seconds: float
    install_seconds: float
    ip_pool: str


@dataclass(frozen=True)
class Product:
    """What to build for one storefront product id."""

    id: str
    name: str
    plan: str
    os: str
    regions: tuple[str, ...]
    default_region: str
    bandwidth_cap_gb: int
    cap_policy: str

    FIELDS: ClassVar[dict[str, Field]] = {
        "name": Field(str, "VPN server"),
        "plan": Field(str, REQUIRED, pattern=r"[a-z0-9\-]{1,64}"),
        "os": Field(str, "Debian 12 x64 (bookworm)", allow_empty=False),
        "regions": Field(list, REQUIRED),
        "default_region": Field(str, REQUIRED, pattern=r"[a-z]{2,5}"),
        "bandwidth_cap_gb": Field(int, 1000, minimum=1),
        "cap_policy": Field(str, "notify", choices=("notify", "suspend")),
    }

    @classmethod
    def from_table(cls, pid: str, table: dict[str, Any], error: Callable[[str], Exception]) -> Product:
        unknown = sorted(set(table) - set(cls.FIELDS))
        if unknown:
            raise error(f"products.{pid}.{unknown[0]}: unknown key; known: {', '.join(cls.FIELDS)}")
        values: dict[str, Any] = {}
        for key, f in cls.FIELDS.items():
            env_name = f"PROVISIONER_PRODUCTS_{pid}_{key}".upper()
            values[key] = f.check(f"products.{pid}.{key}", table.get(key, f.default), env_name)
        regions = values["regions"]
        if not regions or not all(re.fullmatch(r"[a-z]{2,5}", r) for r in regions):
            raise error(f"products.{pid}.regions: must be a non-empty list of region ids like \"ewr\"")
        return cls(id=pid, regions=tuple(regions), **{k: v for k, v in values.items() if k != "regions"})

    @property
    def bandwidth_cap_bytes(self) -> int:
        return self.bandwidth_cap_gb * 1000**3


@dataclass(frozen=True)
class Settings:
    source: str
    database: DatabaseSettings
    storefront: StorefrontSettings
    secrets: SecretsSettings
    vultr: VultrSettings
    cloudflare: CloudflareSettings
    ssh: SshSettings
    planner: PlannerSettings
    sandbox: SandboxSettings
    products: dict[str, Product]

    def product(self, product_id: str) -> Product | None:
        return self.products.get(product_id)
