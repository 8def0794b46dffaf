"""Turn settings into the clouds and the lifecycle (production adapters only: the sandbox
is reached over its ports exactly like the real APIs)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from provisioner.app import App
from provisioner.cloud.cloudflare import CloudflareDNS
from provisioner.cloud.ratelimit import RateLimiter
from provisioner.cloud.vultr import VultrCloud
from provisioner.installer import ssh_installer
from provisioner.lifecycle import Lifecycle
from provisioner.settings import ConfigError
from provisioner.steps import Context


def vultr(app: App) -> VultrCloud:
    v = app.settings.vultr
    return VultrCloud(v.api_key, v.base_url, rate_limiter=RateLimiter.per_second(v.requests_per_second, name="vultr"),
                      timeout=v.timeout_seconds)


def cloudflare(app: App) -> CloudflareDNS:
    c = app.settings.cloudflare
    limiter = RateLimiter.per_window(c.requests_per_window, c.window_seconds, name="cloudflare")
    return CloudflareDNS(c.api_token, c.zone_id, c.base_url, ttl=c.ttl, rate_limiter=limiter)


def worker_public_key(app: App) -> str:
    path = Path(app.settings.ssh.private_key_file)
    pub = Path(str(path) + ".pub")
    if not path.exists():
        raise ConfigError(f"ssh.private_key_file: {path} does not exist; create it with "
                          f"ssh-keygen -t ed25519 -N '' -f {path}")
    from provisioner.cloudinit import ClientKey, UserDataError

    try:
        return ClientKey.from_private_pem(path.read_text(encoding="ascii"), "provisioner-worker").public_line
    except (UserDataError, UnicodeDecodeError):
        if pub.exists():
            return pub.read_text(encoding="ascii").strip()
        raise ConfigError(f"ssh.private_key_file: {path} is not an unencrypted ed25519 OpenSSH key") from None


def context(app: App) -> Context:
    s = app.settings.ssh
    return Context(settings=app.settings, sessions=app.sessions, box=app.secret_box, vultr=vultr(app),
                   dns=cloudflare(app),
                   install=ssh_installer(s.private_key_file, connect_timeout=s.connect_timeout,
                                         command_timeout=s.command_timeout),
                   worker_public_key=worker_public_key(app), clock=app.clock)


def lifecycle(app: App, owner: str | None = None) -> Lifecycle:
    from provisioner.lifecycle import maybe_crash

    ctx = context(app)
    ctx.crash = maybe_crash
    return Lifecycle(ctx, owner=owner or f"{socket.gethostname()}:{os.getpid()}", clock=app.clock)
