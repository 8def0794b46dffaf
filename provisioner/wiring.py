"""Wiring: turn validated settings into the objects commands, jobs and the API use.

The composition root's helper: the database engine and sessions, the secret box, the
storefront, the production adapters (the sandbox is reached over its ports exactly like
the real APIs) and the lifecycle. Constructed once per process; everything here is
cheap until first used. Nothing below this module imports it: the domain receives what
it needs as arguments.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner import db, planning
from provisioner.cloud import cloudflare as cloudflare_mod
from provisioner.cloud import vultr as vultr_mod
from provisioner.cloud.calls import CallStats
from provisioner.cloud.cloudflare import CloudflareDNS
from provisioner.cloud.dns_batch import DnsBatcher
from provisioner.cloud.installer import ssh_remote
from provisioner.cloud.ratelimit import RateLimiter, Shared
from provisioner.cloud.vultr import VultrCloud
from provisioner.lifecycle import Lifecycle
from provisioner.models import Server, ServerEvent, utcnow
from provisioner.naming import Names, names
from provisioner.reconcile import Plan
from provisioner.secrets import SecretBox
from provisioner.settings import ConfigError
from provisioner.settings.schema import Settings
from provisioner.standing import StandingKeeper
from provisioner.steps import Context
from provisioner.storefront import Storefront, open_storefront
from provisioner.subscriptions import Subscription, SubscriptionRows


@dataclass
class App:
    """The process's objects, built on first use from the settings."""

    settings: Settings
    clock: Callable[[], dt.datetime] = field(default=utcnow)

    @cached_property
    def engine(self) -> Engine:
        return db.make_engine(self.settings.database.url, echo=self.settings.database.echo,
                              concurrency=self.settings.worker.threads)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.session_factory(self.engine)

    @cached_property
    def secret_box(self) -> SecretBox:
        return SecretBox(self.settings.secrets.fernet_keys)

    @cached_property
    def storefront(self) -> Storefront:
        return open_storefront(self.settings, self.sessions)

    @cached_property
    def standing(self) -> StandingKeeper:
        """The subscriptions' standing for the dashboard, kept by this process's planning passes."""
        return StandingKeeper()

    @cached_property
    def calls(self) -> CallStats:
        """How this process's calls to Vultr, Cloudflare, SSH and SMTP went lately."""
        return CallStats()

    @property
    def names(self) -> Names:
        return names(self.settings)

    def destroy_cross_check(self) -> planning.CrossCheck | None:
        return planning.stripe_cross_check(self.settings, self.sessions)

    def plan_once(self, on_read: Callable[[SubscriptionRows], None] | None = None) -> tuple[Plan, str | None]:
        """One planning pass. Returns the plan and, if the storefront failed, why."""
        return planning.plan_pass(self.sessions, self.storefront, self.settings, self.clock(), on_read)

    def find_subscription(self, sub_id: str) -> Subscription | None:
        for sub in self.storefront.read(self.clock()):
            if sub.id == sub_id:
                return sub
        return None

    def find_server(self, session: Session, ref: str) -> Server | None:
        """A server by name (g0001.vpn.example.com or just g0001), or by #id."""
        if ref.startswith("#") and ref[1:].isdigit():
            return session.get(Server, int(ref[1:]))
        row = session.scalars(select(Server).where(Server.server_name == ref)).first()
        if row is None and "." not in ref:
            row = session.scalars(
                select(Server).where(Server.server_name == f"{ref}.{self.settings.cloudflare.domain}")).first()
        return row

    def all_servers(self) -> list[Server]:
        with self.sessions() as s:
            return list(s.scalars(select(Server).order_by(Server.id)))

    def events(self, session: Session, server_id: int, limit: int = 200) -> list[ServerEvent]:
        q = (select(ServerEvent).where(ServerEvent.server_id == server_id)
             .order_by(ServerEvent.at.desc(), ServerEvent.id.desc()).limit(limit))
        return list(reversed(list(session.scalars(q))))


# --- adapters and the lifecycle ---------------------------------------------------------------

SWEEP_SHARE = 0.25   # of each provider's budget, at most, for the orphan sweep's listings

def vultr(app: App) -> VultrCloud:
    v = app.settings.vultr
    return VultrCloud(v.api_key, v.base_url, rate_limiter=RateLimiter.per_second(v.requests_per_second, name="vultr"),
                      timeout=v.timeout_seconds)


def cloudflare(app: App) -> CloudflareDNS:
    c = app.settings.cloudflare
    limiter = RateLimiter.per_window(c.requests_per_window, c.window_seconds, name="cloudflare")
    return CloudflareDNS(c.api_token, c.zone_id, c.base_url, ttl=c.ttl, rate_limiter=limiter)


def sweep_adapters(app: App, vultr_shared: VultrCloud, dns_shared: CloudflareDNS, *,
                   share: float = SWEEP_SHARE) -> tuple[VultrCloud, CloudflareDNS]:
    """Adapters for the orphan sweep: the providers' largest list pages, and at most ``share``
    of each provider's budget, on top of the process's shared buckets (the lifecycle's calls
    keep the rest)."""
    v, c = app.settings.vultr, app.settings.cloudflare
    own_v = RateLimiter.per_second(max(0.1, v.requests_per_second * share), name="vultr sweep")
    own_c = RateLimiter.per_window(max(2, int(c.requests_per_window * share)), c.window_seconds, burst=1,
                                   name="cloudflare sweep")
    return (VultrCloud(v.api_key, v.base_url, rate_limiter=Shared(own_v, vultr_shared.rate_limiter),
                       timeout=v.timeout_seconds, per_page=vultr_mod.MAX_PER_PAGE),
            CloudflareDNS(c.api_token, c.zone_id, c.base_url, ttl=c.ttl,
                          rate_limiter=Shared(own_c, dns_shared.rate_limiter), per_page=cloudflare_mod.LARGE_PAGE))


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
    remote = ssh_remote(s.private_key_file, connect_timeout=s.connect_timeout, command_timeout=s.command_timeout)
    return Context(settings=app.settings, sessions=app.sessions, box=app.secret_box,
                   vultr=app.calls.observe("vultr", vultr(app)),
                   dns=DnsBatcher(app.calls.observe("cloudflare", cloudflare(app))),   # concurrent writes batched
                   remote=app.calls.observe("ssh", remote),
                   worker_public_key=worker_public_key(app), names=app.names, clock=app.clock)


def lifecycle(app: App, owner: str | None = None) -> Lifecycle:
    from provisioner.lifecycle import maybe_crash

    ctx = context(app)
    ctx.crash = maybe_crash
    return Lifecycle(ctx, owner=owner or f"{socket.gethostname()}:{os.getpid()}", clock=app.clock)
