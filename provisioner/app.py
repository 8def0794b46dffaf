"""Wiring: turn validated settings into the objects commands and jobs use.

Constructed once per process; everything here is cheap until first used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from provisioner import db
from provisioner.config_schema import Settings
from provisioner.models import Server, ServerEvent, utcnow
from provisioner.reconcile import Plan, Policy, ServerState, plan
from provisioner.secrets import SecretBox
from provisioner.storefront import Storefront, StorefrontUnavailable, open_storefront
from provisioner.subscriptions import Subscription


@dataclass
class App:
    settings: Settings
    clock: Callable[[], dt.datetime] = field(default=utcnow)

    @cached_property
    def engine(self) -> Engine:
        return db.make_engine(self.settings.database.url, echo=self.settings.database.echo)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        # notify.enqueue finds addresses and links here when a job only holds a session
        return db.session_factory(self.engine, info={"settings": self.settings})

    @cached_property
    def secret_box(self) -> SecretBox:
        return SecretBox(self.settings.secrets.fernet_keys)

    @cached_property
    def storefront(self) -> Storefront:
        return open_storefront(self.settings, self.sessions)

    @property
    def policy(self) -> Policy:
        p = self.settings.planner
        return Policy(max_destroy_count=p.max_destroy_count, max_destroy_fraction=p.max_destroy_fraction,
                      destroy_grace=dt.timedelta(hours=p.destroy_grace_hours),
                      products=frozenset(self.settings.products))

    def destroy_cross_check(self) -> Callable[[Subscription], bool | None] | None:
        """With EDD and a Stripe key: ask Stripe before destroying (EDD can miss webhooks)."""
        st = self.settings.stripe
        if self.settings.storefront.kind != "edd" or not st.api_key or not st.cross_check_destroys:
            return None
        from provisioner.storefront.stripe import StripeStorefront

        stripe_view = StripeStorefront(self.sessions, self.settings)
        return lambda sub: stripe_view.cross_check_ended(sub.profile_id)

    def server_states(self) -> list[ServerState]:
        # Only the planner's columns: full rows would drag every server's sealed PKI and .ovpn along.
        cols = (Server.id, Server.server_name, Server.subscription_id, Server.status, Server.action,
                Server.step_deadline, Server.rebuild_now_status, Server.paused, Server.needs_human,
                Server.rebuild_due_at)
        with self.sessions() as s:
            return [ServerState(id=r[0], name=r[1], subscription_id=r[2], status=r[3], action=r[4],
                                step_deadline=r[5], rebuild_now=bool(r[6]), paused=bool(r[7]),
                                needs_human=bool(r[8]), rebuild_due_at=r[9])
                    for r in s.execute(select(*cols))]

    def plan_once(self) -> tuple[Plan, str | None]:
        """One planning pass. Returns the plan and, if the storefront failed, why."""
        now = self.clock()
        servers = self.server_states()
        try:
            subs = self.storefront.read(now)
        except StorefrontUnavailable as exc:
            return plan(None, servers, now, self.policy), str(exc)
        return plan(subs, servers, now, self.policy), None

    def all_servers(self) -> list[Server]:
        with self.sessions() as s:
            return list(s.scalars(select(Server).order_by(Server.id)))

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

    def events(self, session: Session, server_id: int, limit: int = 200) -> list[ServerEvent]:
        q = (select(ServerEvent).where(ServerEvent.server_id == server_id)
             .order_by(ServerEvent.at.desc(), ServerEvent.id.desc()).limit(limit))
        return list(reversed(list(session.scalars(q))))
