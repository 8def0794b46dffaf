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
# The VPN protocols a product can offer (``products.<id>.protocols``), in install order.
OPENVPN = "openvpn"
WIREGUARD = "wireguard"
PROTOCOLS = (OPENVPN, WIREGUARD)
PROTOCOL_NAMES = {OPENVPN: "OpenVPN", WIREGUARD: "WireGuard"}   # as people write them


class ConfigError(ValueError):
    """A configuration problem, described in one line that names the key."""


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
        "dashboard_url": Field(str, "", pattern=r"https?://\S+"),
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
        "max_destroy_count": Field(int, 5, minimum=1),
        "max_destroy_fraction": Field(float, 0.1, minimum=0, maximum=1),
        "breaker_window_hours": Field(float, 24.0, minimum=1, maximum=24 * 31),
        "destroy_grace_hours": Field(float, 48.0, minimum=0, maximum=24 * 60),
        "min_read_fraction": Field(float, 0.9, minimum=0, maximum=1),
        "server_name_prefix": Field(str, "g0", pattern=r"[a-z][a-z0-9\-]{0,15}"),
    },
    "lifecycle": {
        "snapshots": Field(bool, False),
        "poll_seconds": Field(float, 10.0, minimum=0.05, maximum=600),
        "lease_seconds": Field(float, 60.0, minimum=1, maximum=7200),
        "max_attempts": Field(int, 8, minimum=1, maximum=100),
        "error_after_attempts": Field(int, 3, minimum=1, maximum=100),
        "backoff_base_seconds": Field(float, 30.0, minimum=0.01, maximum=3600),
        "backoff_cap_seconds": Field(float, 1800.0, minimum=0.01, maximum=86400),
        "boot_deadline_minutes": Field(float, 10.0, minimum=0.01, maximum=240),
        "install_deadline_minutes": Field(float, 20.0, minimum=0.01, maximum=240),
        "snapshot_deadline_minutes": Field(float, 60.0, minimum=0.01, maximum=480),
        "api_deadline_minutes": Field(float, 15.0, minimum=0.01, maximum=240),
        "retire_delay_seconds": Field(float, 120.0, minimum=0, maximum=86400),
        "keep_identity_days": Field(float, 30.0, minimum=0, maximum=366),
    },
    "worker": {
        "tick_seconds": Field(float, 60.0, minimum=1, maximum=3600),
        "threads": Field(int, 8, minimum=1, maximum=256),
        "timezone": Field(str, "America/New_York", allow_empty=False),
        "bandwidth_sync_minutes": Field(float, 60.0, minimum=1, maximum=1440),
        "sweep_minutes": Field(float, 30.0, minimum=1, maximum=1440),
        "sweep_delete_after_sightings": Field(int, 0, minimum=0, maximum=1000),
        "rebuild_spread_minutes": Field(float, 60.0, minimum=0, maximum=720),
        "shutdown_grace_seconds": Field(float, 3.0, minimum=0, maximum=3600),
        "lock_file": Field(str, "var/provisioner.lock", allow_empty=False),
        "database_outage_seconds": Field(float, 300.0, minimum=5, maximum=86400),
        "metrics_listen": Field(str, "127.0.0.1", allow_empty=False),
        "metrics_port": Field(int, 0, minimum=0, maximum=65535),
    },
    "api": {
        "listen_host": Field(str, "127.0.0.1", allow_empty=False),
        "listen_port": Field(int, 8000, minimum=0, maximum=65535),
        "public_url": Field(str, "http://127.0.0.1:8000", pattern=r"https?://\S+"),
        "jwt_secret": Field(str, "", secret=True),
        "jwt_audience": Field(str, "provisioner-dashboard", allow_empty=False),
        "cors_origin": Field(str, ""),
        "rebuild_cooldown_seconds": Field(float, 300.0, minimum=0, maximum=86400),
        "restart_cooldown_seconds": Field(float, 600.0, minimum=0, maximum=86400),
        "root_password_views_per_hour": Field(int, 10, minimum=1, maximum=1000),
        "requests_per_minute": Field(int, 120, minimum=1, maximum=100000),
        "max_body_bytes": Field(int, 16384, minimum=256, maximum=10_000_000),
        "listing_memory_mb": Field(int, 8, minimum=0, maximum=4096),
    },
    "stripe": {
        "api_key": Field(str, "", secret=True),
        "api_base": Field(str, "https://api.stripe.com", pattern=r"https?://\S+"),
        "webhook_secrets": Field(list, [], secret=True),
        "webhook_tolerance_seconds": Field(int, 300, minimum=0, maximum=86400),
        "past_due_grace_days": Field(float, 3.0, minimum=0, maximum=60),
        "cross_check_destroys": Field(bool, True),
    },
    "notify": {
        "smtp_host": Field(str, ""),
        "smtp_port": Field(int, 587, minimum=1, maximum=65535),
        "smtp_security": Field(str, "starttls", choices=("starttls", "ssl", "none")),
        "smtp_username": Field(str, ""),
        "smtp_password": Field(str, "", secret=True),
        "from_address": Field(str, "Provisioner <noreply@example.com>"),
        "operator_email": Field(str, ""),
        "default_language": Field(str, "en", pattern=r"[a-z]{2}"),
        "webhook_url": Field(str, "", pattern=r"https?://\S+"),
        "webhook_secret": Field(str, "", secret=True),
        "max_attempts": Field(int, 20, minimum=1, maximum=1000),
        "max_delay_minutes": Field(float, 30.0, minimum=1, maximum=10080),
    },
    "privacy": {
        "ip_history_days": Field(int, 180, minimum=1, maximum=3650),
    },
    "sandbox": {
        "enabled": Field(bool, False),
        "port_base": Field(int, 0, minimum=0, maximum=65500),
        "state_file": Field(str, "var/sandbox-state.json"),
        "host_root": Field(str, "var/sandbox-hosts"),
        "vultr_port": Field(int, 18080, minimum=0, maximum=65535),
        "cloudflare_port": Field(int, 18081, minimum=0, maximum=65535),
        "admin_port": Field(int, 18082, minimum=0, maximum=65535),
        "boot_seconds": Field(float, 5.0, minimum=0, maximum=3600),
        "install_seconds": Field(float, 2.0, minimum=0, maximum=3600),
        "ip_pool": Field(str, "127.77.0.0/16", pattern=r"127\.\d+\.\d+\.\d+/\d+"),
        "smtp_port": Field(int, 18025, minimum=0, maximum=65535),
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
    dashboard_url: str


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
    breaker_window_hours: float
    destroy_grace_hours: float
    min_read_fraction: float
    server_name_prefix: str


@dataclass(frozen=True)
class LifecycleSettings:
    snapshots: bool
    poll_seconds: float
    lease_seconds: float
    max_attempts: int
    error_after_attempts: int
    backoff_base_seconds: float
    backoff_cap_seconds: float
    boot_deadline_minutes: float
    install_deadline_minutes: float
    snapshot_deadline_minutes: float
    api_deadline_minutes: float
    retire_delay_seconds: float
    keep_identity_days: float


@dataclass(frozen=True)
class WorkerSettings:
    tick_seconds: float
    threads: int
    timezone: str
    bandwidth_sync_minutes: float
    sweep_minutes: float
    sweep_delete_after_sightings: int
    rebuild_spread_minutes: float
    shutdown_grace_seconds: float
    lock_file: str
    database_outage_seconds: float
    metrics_listen: str
    metrics_port: int


@dataclass(frozen=True)
class ApiSettings:
    listen_host: str
    listen_port: int
    public_url: str
    jwt_secret: str = field(repr=False)
    jwt_audience: str
    cors_origin: str
    rebuild_cooldown_seconds: float
    restart_cooldown_seconds: float
    root_password_views_per_hour: int
    requests_per_minute: int
    max_body_bytes: int
    listing_memory_mb: int


@dataclass(frozen=True)
class StripeSettings:
    api_key: str = field(repr=False)
    api_base: str
    webhook_secrets: list[str] = field(repr=False)
    webhook_tolerance_seconds: int
    past_due_grace_days: float
    cross_check_destroys: bool


@dataclass(frozen=True)
class NotifySettings:
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str
    smtp_password: str = field(repr=False)
    from_address: str
    operator_email: str
    default_language: str
    webhook_url: str
    webhook_secret: str = field(repr=False)
    max_attempts: int
    max_delay_minutes: float

    @property
    def operator_channel(self) -> bool:
        """Whether an operator alert can land: e-mail with an SMTP server, or the webhook."""
        return bool(self.operator_email and self.smtp_host) or bool(self.webhook_url)


@dataclass(frozen=True)
class PrivacySettings:
    ip_history_days: int


@dataclass(frozen=True)
class SandboxSettings:
    enabled: bool
    port_base: int
    state_file: str
    host_root: str
    vultr_port: int
    cloudflare_port: int
    admin_port: int
    boot_seconds: float
    install_seconds: float
    ip_pool: str
    smtp_port: int


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
    max_devices: int = 5
    protocols: tuple[str, ...] = (OPENVPN,)

    FIELDS: ClassVar[dict[str, Field]] = {
        "name": Field(str, "VPN server"),
        "plan": Field(str, REQUIRED, pattern=r"[a-z0-9\-]{1,64}"),
        "os": Field(str, "Debian 12 x64 (bookworm)", allow_empty=False),
        "regions": Field(list, REQUIRED),
        "default_region": Field(str, REQUIRED, pattern=r"[a-z]{2,5}"),
        "bandwidth_cap_gb": Field(int, 1000, minimum=1),
        "cap_policy": Field(str, "notify", choices=("notify", "suspend")),
        "max_devices": Field(int, 5, minimum=1, maximum=50),
        "protocols": Field(list, [OPENVPN]),
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
        protocols = _protocols(f"products.{pid}.protocols", values["protocols"], error)
        rest = {k: v for k, v in values.items() if k not in ("regions", "protocols")}
        return cls(id=pid, regions=tuple(regions), protocols=protocols, **rest)

    def offers(self, protocol: str) -> bool:
        return protocol in self.protocols

    @property
    def bandwidth_cap_bytes(self) -> int:
        return self.bandwidth_cap_gb * 1000**3


def _protocols(dotted: str, words: list[str], error: Callable[[str], Exception]) -> tuple[str, ...]:
    """A product's VPN protocols: a non-empty list of known words, each once (kept in install order)."""
    known = ", ".join(f'"{p}"' for p in PROTOCOLS)
    if not words:
        raise error(f"{dotted}: must name at least one protocol: {known}")
    unknown = [w for w in words if w not in PROTOCOLS]
    if unknown:
        raise error(f"{dotted}: unknown protocol {unknown[0]!r}; known: {known}")
    if len(set(words)) != len(words):
        raise error(f"{dotted}: names a protocol twice; list each once")
    return tuple(p for p in PROTOCOLS if p in words)


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
    lifecycle: LifecycleSettings
    worker: WorkerSettings
    api: ApiSettings
    stripe: StripeSettings
    notify: NotifySettings
    privacy: PrivacySettings
    sandbox: SandboxSettings
    products: dict[str, Product]

    def product(self, product_id: str) -> Product | None:
        return self.products.get(product_id)
