"""Every table of ours, in one metadata (one Alembic history).

- ``provisioner_servers`` and ``provisioner_server_events``: the seed's server table and
  its audit trail; ``provisioner_worker_status`` and ``provisioner_orphans`` for health;
  ``provisioner_destroy_holds``: the destroys the planner holds, and why.
- ``provisioner_stripe_events``: every verified webhook event, once (its id is the key),
  with what processing made of it. A replay finds its row and changes nothing.
- ``provisioner_stripe_subscriptions``: our copy of each Stripe subscription, written
  only from verified events and from the Stripe API. ``last_event_created`` is the Stripe
  time the stored state is *as of*; an older event never overwrites a newer state.
- ``provisioner_ip_history``: every public address a server held, from when to when (who
  held an address named in an abuse report), kept for ``privacy.ip_history_days``.
- ``provisioner_outbox``: messages to send (email or signed webhook), written in the
  same transaction as the state change that caused them and sent later by
  :func:`provisioner.notify.outbox.send_pending`. ``dedupe_key`` is unique.

Our tables carry the ``provisioner_`` prefix so they can live inside the WordPress
database next to ``wp_*`` without clashing. The storefront's tables are never written.

Sealed (Fernet) columns are listed once, in :data:`SEALED_COLUMNS`, for key rotation.

Units: bandwidth in bytes (the seed's "Mb" would lose precision when summed across
rebuilds). Times are naive UTC in the database (MySQL DATETIME has no zone) and aware UTC
in Python: :class:`UTCDateTime` converts at the boundary.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, lazyload, mapped_column, relationship

from provisioner.locations import RANDOM
from provisioner.schedule import Schedule


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: object) -> dt.datetime | None:
    """An aggregate's timestamp (``MIN``/``MAX`` may bypass the column type on some drivers:
    a string on SQLite, a naive datetime on MySQL) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"unexpected timestamp {value!r}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC in Python, naive UTC in the database (SQLite and MySQL alike)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Status(enum.StrEnum):
    """What the customer sees."""

    QUEUED = "Queued"
    INSTALLING = "Installing"
    RUNNING = "Running"
    REBUILDING = "Rebuilding"
    DESTROYING = "Destroying"
    DESTROYED = "Destroyed"
    ERROR = "Error"
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"


LIVE_STATUSES = frozenset(s.value for s in Status if s is not Status.DESTROYED)
# The statuses a rebuild may start from (an Error server is rebuilt to recover it).
REBUILDABLE = frozenset({Status.RUNNING.value, Status.ERROR.value})
RANDOM_LOCATION = RANDOM


def is_idle(action: str | None, status: str) -> bool:
    """The one busy rule: a server may start a rebuild when no action runs on it and it is
    Running (or in Error). The API, the CLI, the planner and the schedule marker all ask this."""
    return not action and status in REBUILDABLE


class Base(DeclarativeBase):
    pass


class SealedField:
    """One of a server's sealed tokens, read and written as ``row.<name>`` as if it were a column
    of the server row; it is stored in :class:`ServerSealed`. Writing one also touches the
    server row, so the write carries the row's version check (fencing) like any other."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, row: None, owner: type) -> SealedField: ...
    @overload
    def __get__(self, row: Server, owner: type) -> str | None: ...

    def __get__(self, row: Server | None, owner: type) -> SealedField | str | None:
        if row is None:
            return self
        sealed = row.sealed
        return None if sealed is None else getattr(sealed, self.name)

    def __set__(self, row: Server, value: str | None) -> None:
        sealed = row.sealed
        if sealed is None:
            if value is None:
                return
            sealed = row.sealed = ServerSealed()
        setattr(sealed, self.name, value)
        row.updated_at = utcnow()


class Server(Base):
    __tablename__ = "provisioner_servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # --- the seed's server table ---------------------------------------------------------
    customer_id: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str] = mapped_column(String(64))
    # "at most one server per subscription, ever": unique, and Destroyed rows are kept.
    subscription_id: Mapped[str] = mapped_column(String(64), unique=True)
    server_ip: Mapped[str | None] = mapped_column(String(45))
    user_email: Mapped[str] = mapped_column(String(191))
    server_name: Mapped[str | None] = mapped_column(String(191), unique=True)
    bandwidth_this_month: Mapped[int] = mapped_column(BigInteger, default=0)      # bytes
    bandwidth_limit_this_month: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes
    rebuild_schedule: Mapped[str] = mapped_column(String(16), default=Schedule.NONE.value)
    current_location: Mapped[str | None] = mapped_column(String(16))
    rebuild_schedule_location: Mapped[str] = mapped_column(String(16), default=RANDOM_LOCATION)
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED.value)
    rebuild_now_location: Mapped[str | None] = mapped_column(String(16))
    rebuild_now_status: Mapped[bool] = mapped_column(Boolean, default=False)
    # --- what the lifecycle needs ----------------------------------------------------------
    instance_id: Mapped[str | None] = mapped_column(String(64))
    instance_label: Mapped[str | None] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The generation whose create POST may have been sent (committed before sending): only a
    # create step re-entered for that generation lists by label to adopt a lost reply's instance.
    create_sent_generation: Mapped[int | None] = mapped_column(Integer)
    old_instance_id: Mapped[str | None] = mapped_column(String(64))    # kept until its delete is confirmed
    target_location: Mapped[str | None] = mapped_column(String(16))
    dns_record_id: Mapped[str | None] = mapped_column(String(64))
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(16))            # create | rebuild | destroy
    step: Mapped[str | None] = mapped_column(String(32))
    step_deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    needs_human: Mapped[bool] = mapped_column(Boolean, default=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)       # "hold while I look": nobody works on it
    # An operator took the server down (a forced destroy: abuse, a chargeback). Distinct from
    # `paused`: the planner does not build it again until `provisioner release`; its PKI is kept.
    operator_hold_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    operator_hold_reason: Mapped[str | None] = mapped_column(Text)
    # compare-and-set: every claim bumps `version`; a write with a stale version changes nothing
    version: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bandwidth_month: Mapped[str | None] = mapped_column(String(7))     # "YYYY-MM" the counter belongs to
    bandwidth_carried: Mapped[int] = mapped_column(BigInteger, default=0)  # earlier instances, this month
    last_rebuilt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    rebuild_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # customer cooldown
    schedule_slot_done: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)    # last slot rebuilt for
    schedule_set_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)       # when the schedule was chosen
    rebuild_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)        # spread start of a due slot
    bandwidth_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bandwidth_alerted: Mapped[int] = mapped_column(Integer, default=0)              # 0, 80 or 100 (% of cap)
    suspended_by_cap: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(8))                        # customer's, for messages
    # --- what the customer controls on the server (provisioner.customer, provisioner.access) ------
    key_only: Mapped[bool] = mapped_column(Boolean, default=False)          # SSH: keys only, no root password
    # Set when the customer changed something the running server must get (a revoked device's CRL,
    # SSH keys, key-only login); cleared by the step that shipped the state the row then had.
    # Every such change also bumps the revision, so it always rewrites the row: a step that read
    # the row before the change cannot record "shipped" (the version column fences it).
    access_pending_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    access_revision: Mapped[int] = mapped_column(Integer, default=0)
    restart_pending: Mapped[bool] = mapped_column(Boolean, default=False)   # a reboot asked for, not started
    restart_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # customer cooldown
    new_ip: Mapped[str | None] = mapped_column(String(45))      # a rebuild's new instance, until DNS moves
    # The VPN protocols the running instance was installed with, space-separated ("openvpn wireguard"),
    # set by each install and sync that installs one. NULL: installed before protocols were recorded,
    # which was OpenVPN alone (provisioner.access.installed). A product that gains a protocol gets it
    # on its running servers by a sync, without a rebuild.
    vpn_protocols: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # --- running unattended ------------------------------------------------------------------
    # The storefront account that owns the subscription now (WordPress user id for EDD, Stripe
    # customer id); a dashboard token's `sub` must name it. NULL: a guest (sees nothing).
    account_id: Mapped[str | None] = mapped_column(String(64))
    ended_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)     # a pass first saw it ended
    planned_destroy_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # the planner started a destroy
    identity_kept_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # Destroyed: name + PKI kept
    action_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # heartbeats never move it
    human_alerted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)   # needs_human alert queued

    # The seed's root_password_enc and ovpn_file_enc and our secrets_enc live in their own table
    # (ServerSealed), so the server table stays narrow for the planner's scan and the dashboard's
    # Core reads. An ORM row is loaded with them (one outer join): a row read in a session still
    # has its tokens after it closes. The jobs that walk many rows and never open a token load
    # without them (WITHOUT_SEALED; touched anyway, they load inside the session).
    sealed: Mapped[ServerSealed | None] = relationship(lazy="joined", cascade="all, delete-orphan")
    root_password_enc = SealedField()    # Fernet token, never plaintext
    ovpn_file_enc = SealedField()        # Fernet token of the .ovpn bytes
    secrets_enc = SealedField()          # Fernet token: PKI + SSH host key + WireGuard keys

    # Every UPDATE carries "AND version = <what we read>" and bumps it: a worker whose claim was
    # taken over gets StaleDataError instead of overwriting the new owner's work (fencing).
    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        Index("ix_provisioner_servers_status", "status"),
        Index("ix_provisioner_servers_next_attempt", "next_attempt_at"),
        Index("ix_provisioner_servers_user_email", "user_email"),
        # The driver's "what is due?": rows with an action are few, idle rows (action NULL) are
        # skipped by the range on the first column; the rest of the row is answered from the index.
        Index("ix_provisioner_servers_due", "action", "next_attempt_at", "lease_until", "needs_human", "paused"),
        # The leader's "which customer asked for a rebuild?" (rebuild_now_status is rarely true).
        Index("ix_provisioner_servers_rebuild_now", "rebuild_now_status", "rebuild_due_at"),
        # The schedule marker's "whose slot is not done yet?", one range per schedule.
        Index("ix_provisioner_servers_schedule", "rebuild_schedule", "schedule_slot_done"),
        # The leader's "which running server must get the customer's changes?" (rarely any).
        Index("ix_provisioner_servers_access_pending", "access_pending_since"),
        Index("ix_provisioner_servers_restart", "restart_pending"),
        # The dashboard's "whose servers?" and the breaker's "how many destroys in the window?".
        Index("ix_provisioner_servers_account", "account_id"),
        Index("ix_provisioner_servers_planned_destroy", "planned_destroy_at"),
    )

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def idle(self) -> bool:
        return is_idle(self.action, self.status)

    @property
    def on_hold(self) -> bool:
        """Taken down by an operator until released."""
        return self.operator_hold_at is not None

    @property
    def busy(self) -> bool:
        """A rebuild cannot be asked for now: not idle, one is already requested, or support holds it."""
        return not self.idle or bool(self.rebuild_now_status) or bool(self.paused) or self.on_hold

    def __repr__(self) -> str:  # secrets never appear here
        return f"<Server {self.id} {self.server_name or '-'} sub={self.subscription_id} {self.status}>"


class ServerSealed(Base):
    """A server's sealed tokens (Fernet), one row per server that ever had one: kept out of
    ``provisioner_servers`` (migration 0010) because together they are ~12 KB a server, which
    every scan of the server table would otherwise drag along. Reached as ``row.secrets_enc``,
    ``row.ovpn_file_enc``, ``row.root_password_enc`` (:class:`SealedField`)."""

    __tablename__ = "provisioner_server_sealed"

    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"), primary_key=True)
    secrets_enc: Mapped[str | None] = mapped_column(Text)
    ovpn_file_enc: Mapped[str | None] = mapped_column(Text)
    root_password_enc: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:  # tokens never appear here
        return f"<ServerSealed {self.server_id}>"


class DestroyHold(Base):
    """A destroy the planner holds, and why: written by every planning pass that read the
    storefront (a row per held server; gone once it is no longer held), read by
    ``provisioner destroys`` and ``provisioner status``. An operator approves a destroy held
    by the circuit breaker here (``approved_*``); the next pass lets it go."""

    __tablename__ = "provisioner_destroy_holds"

    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    reason_code: Mapped[str] = mapped_column(String(32))   # vanished | no_evidence | thin_read | breaker | …
    reason: Mapped[str] = mapped_column(Text, default="")
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)   # this hold (code, reason) began
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WorkerStatus(Base):
    """What `provisioner status` reports: last tick, last success per provider, and so on."""

    __tablename__ = "provisioner_worker_status"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Orphan(Base):
    """A provider resource carrying our tag with no live server, as the sweeper saw it."""

    __tablename__ = "provisioner_orphans"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)       # instance | dns | snapshot
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(191), default="")
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sightings: Mapped[int] = mapped_column(Integer, default=1)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ServerEvent(Base):
    """Append-only audit trail: who did what to which server, and how it went."""

    __tablename__ = "provisioner_server_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("provisioner_servers.id"))
    actor: Mapped[str] = mapped_column(String(64))       # worker | operator:<user> | customer | planner
    what: Mapped[str] = mapped_column(String(64))        # e.g. create.instance, rebuild.dns, plan.held
    outcome: Mapped[str] = mapped_column(String(16))     # started | ok | failed | skipped | info
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_provisioner_server_events_server_at", "server_id", "at"),
                      # the customer's paged history: newest first, from a cursor
                      Index("ix_provisioner_server_events_server_id", "server_id", "id"))


class IpHolding(Base):
    """Who held which public address when: one row per address an instance of a server had.

    Opened when the worker first sees the instance up at the address, closed when that
    instance is deleted (a rebuild's retire, a destroy). The customer fields are a copy taken
    when the row was opened, so an abuse report about an old address names who held it then.
    Closed rows older than ``privacy.ip_history_days`` are deleted (job ``purge_ip_history``).
    """

    __tablename__ = "provisioner_ip_history"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    ip: Mapped[str] = mapped_column(String(45))
    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"))
    server_name: Mapped[str | None] = mapped_column(String(191))
    subscription_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    user_email: Mapped[str] = mapped_column(String(191))
    instance_id: Mapped[str | None] = mapped_column(String(64))
    held_from: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    held_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)   # None: still held

    __table_args__ = (
        Index("ix_provisioner_ip_history_ip", "ip", "held_from"),
        Index("ix_provisioner_ip_history_server", "server_id", "held_until"),
        Index("ix_provisioner_ip_history_until", "held_until"),
    )

    def __repr__(self) -> str:  # no e-mail: personal data
        return f"<IpHolding {self.ip} server={self.server_id} {self.held_from:%Y-%m-%d %H:%M}..{self.held_until}>"


# --- the Stripe storefront's copy of its subscriptions, and the notification outbox -------------


# Outbox row states.
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"

EMAIL = "email"
WEBHOOK = "webhook"


class StripeEvent(Base):
    __tablename__ = "provisioner_stripe_events"

    id: Mapped[str] = mapped_column(String(191), primary_key=True)            # evt_…
    type: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime)                 # Stripe's event.created
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(191), default="")


class StripeSubscription(Base):
    __tablename__ = "provisioner_stripe_subscriptions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)             # sub_…
    customer_id: Mapped[str] = mapped_column(String(64), default="")          # cus_…
    email: Mapped[str] = mapped_column(String(191), default="")
    price_id: Mapped[str] = mapped_column(String(64), default="")             # price_… = settings.products key
    status: Mapped[str] = mapped_column(String(32), default="")               # "" = not known yet
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    current_period_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trial_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    object_created: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_event_created: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<StripeSubscription {self.id} {self.status or '?'}>"


class OutboxMessage(Base):
    __tablename__ = "provisioner_outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))                  # server_ready, needs_attention, …
    channel: Mapped[str] = mapped_column(String(16))               # email | webhook
    recipient: Mapped[str] = mapped_column(String(191), default="")  # address, or the webhook's host
    language: Mapped[str] = mapped_column(String(8), default="en")
    subject: Mapped[str] = mapped_column(String(255), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    server_id: Mapped[int | None] = mapped_column(Integer)
    dedupe_key: Mapped[str] = mapped_column(String(191), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)   # while `sending`
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_provisioner_outbox_status_due", "status", "next_attempt_at"),)

    def __repr__(self) -> str:  # no recipient or body: they are personal data
        return f"<OutboxMessage {self.id} {self.kind}/{self.channel} {self.status} attempts={self.attempts}>"


# --- what the customer keeps on a server: devices, SSH keys; usage per day; the plan's standing ----


class Device(Base):
    """One of a server's devices: a name the customer chose, and one profile per protocol.

    The keys live in the server's sealed secrets (the OpenVPN PKI); these rows are what a
    list shows without opening them. ``device_id`` is the PKI's id ("1", "2", ...), never reused.
    """

    __tablename__ = "provisioner_devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"))
    device_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("server_id", "device_id", name="uq_provisioner_devices_server_device"),)

    def __repr__(self) -> str:
        return f"<Device {self.server_id}/{self.device_id} {'revoked' if self.revoked_at else 'active'}>"


class DeviceProfile(Base):
    """A device's profile for one protocol (``openvpn``; ``wireguard`` next). Revoking a device
    revokes every one of its profiles."""

    __tablename__ = "provisioner_device_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("provisioner_devices.id"))
    protocol: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("device_pk", "protocol", name="uq_provisioner_device_profiles_protocol"),)


class SSHKey(Base):
    """A public key the customer put on their server (personal data, not a secret)."""

    __tablename__ = "provisioner_ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"))
    fingerprint: Mapped[str] = mapped_column(String(64))     # SHA256:<base64>, as ssh-keygen -l prints it
    key_type: Mapped[str] = mapped_column(String(32))
    bits: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(String(100), default="")
    public_key: Mapped[str] = mapped_column(Text)            # the authorized_keys line, normalised
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("server_id", "fingerprint", name="uq_provisioner_ssh_keys_fingerprint"),)

    def __repr__(self) -> str:
        return f"<SSHKey {self.server_id} {self.key_type} {self.fingerprint}>"


class BandwidthDay(Base):
    """Bytes one instance of a server moved on one UTC day (the usage chart). A rebuild's old
    instance keeps its rows, so a day's total is the sum over the server's instances."""

    __tablename__ = "provisioner_bandwidth_days"

    server_id: Mapped[int] = mapped_column(ForeignKey("provisioner_servers.id"), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class SubscriptionStanding(Base):
    """What the storefront last said about a subscription, for the customer's page: the status
    word, whether it renews, the paid-through date and how long it entitles. Written by the
    planning pass when it changes; read by the dashboard (which never reads the storefront)."""

    __tablename__ = "provisioner_subscription_standing"

    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default="")
    renews: Mapped[bool] = mapped_column(Boolean, default=False)
    paid_through: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entitled_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
# A loader option for the jobs that walk many rows and never open a token: the row comes without
# its sealed tokens (still loaded, inside the session, if touched).
WITHOUT_SEALED = lazyload(Server.sealed)

# Every column that holds a Fernet token, in one place: `provisioner secrets rotate` re-seals
# exactly these. A table that adds a sealed column adds it here (it needs a one-column primary key).
SEALED_COLUMNS: tuple[Any, ...] = (ServerSealed.secrets_enc, ServerSealed.ovpn_file_enc, ServerSealed.root_password_enc)
