"""The worker's own tables: ``provisioner_servers`` and ``provisioner_server_events``.

Our tables carry the ``provisioner_`` prefix so they can live inside the WordPress
database next to ``wp_*`` without clashing. The storefront's tables are never written.

Units: bandwidth in bytes (the seed's "Mb" would lose precision when summed across
rebuilds). Times are naive UTC in the database (MySQL DATETIME has no zone) and aware UTC
in Python: :class:`UTCDateTime` converts at the boundary.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


LIVE_STATUSES = frozenset(s.value for s in Status if s is not Status.DESTROYED)


class Schedule(enum.StrEnum):
    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


RANDOM_LOCATION = "random"


class Base(DeclarativeBase):
    pass


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
    root_password_enc: Mapped[str | None] = mapped_column(Text)      # Fernet token, never plaintext
    bandwidth_this_month: Mapped[int] = mapped_column(BigInteger, default=0)      # bytes
    bandwidth_limit_this_month: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes
    rebuild_schedule: Mapped[str] = mapped_column(String(16), default=Schedule.NONE.value)
    current_location: Mapped[str | None] = mapped_column(String(16))
    rebuild_schedule_location: Mapped[str] = mapped_column(String(16), default=RANDOM_LOCATION)
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED.value)
    ovpn_file_enc: Mapped[str | None] = mapped_column(Text)          # Fernet token of the .ovpn bytes
    rebuild_now_location: Mapped[str | None] = mapped_column(String(16))
    rebuild_now_status: Mapped[bool] = mapped_column(Boolean, default=False)
    # --- what the lifecycle needs ----------------------------------------------------------
    instance_id: Mapped[str | None] = mapped_column(String(64))
    instance_label: Mapped[str | None] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    old_instance_id: Mapped[str | None] = mapped_column(String(64))    # kept until its delete is confirmed
    target_location: Mapped[str | None] = mapped_column(String(16))
    dns_record_id: Mapped[str | None] = mapped_column(String(64))
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    secrets_enc: Mapped[str | None] = mapped_column(Text)             # Fernet token: PKI + SSH host key
    action: Mapped[str | None] = mapped_column(String(16))            # create | rebuild | destroy
    step: Mapped[str | None] = mapped_column(String(32))
    step_deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    needs_human: Mapped[bool] = mapped_column(Boolean, default=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # compare-and-set: every claim bumps `version`; a write with a stale version changes nothing
    version: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bandwidth_month: Mapped[str | None] = mapped_column(String(7))     # "YYYY-MM" the counter belongs to
    bandwidth_carried: Mapped[int] = mapped_column(BigInteger, default=0)  # earlier instances, this month
    last_rebuilt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    rebuild_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # customer cooldown
    schedule_slot_done: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)    # last slot rebuilt for
    rebuild_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)        # spread start of a due slot
    bandwidth_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bandwidth_alerted: Mapped[int] = mapped_column(Integer, default=0)              # 0, 80 or 100 (% of cap)
    suspended_by_cap: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(8))                        # customer's, for messages
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    # Every UPDATE carries "AND version = <what we read>" and bumps it: a worker whose claim was
    # taken over gets StaleDataError instead of overwriting the new owner's work (fencing).
    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        Index("ix_provisioner_servers_status", "status"),
        Index("ix_provisioner_servers_next_attempt", "next_attempt_at"),
        Index("ix_provisioner_servers_user_email", "user_email"),
    )

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    def __repr__(self) -> str:  # secrets never appear here
        return f"<Server {self.id} {self.server_name or '-'} sub={self.subscription_id} {self.status}>"


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

    __table_args__ = (Index("ix_provisioner_server_events_server_at", "server_id", "at"),)


# Stripe and outbox tables share this metadata (one Alembic history); imported last because
# that module imports Base from here.
from provisioner import models_extra  # noqa: E402, F401
