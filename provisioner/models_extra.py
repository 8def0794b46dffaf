"""Tables for the Stripe storefront and the notification outbox (migration 0003).

They share :class:`provisioner.models.Base`, so Alembic sees one metadata once
``provisioner.models`` imports this module.

- ``provisioner_stripe_events``: every verified webhook event, once (its id is the key),
  with what processing made of it. A replay finds its row and changes nothing.
- ``provisioner_stripe_subscriptions``: our copy of each Stripe subscription, written
  only from verified events and from the Stripe API. ``last_event_created`` is the Stripe
  time the stored state is *as of* (the event's ``created``, or the fetch time for a
  state read from the API); an older event never overwrites a newer state.
- ``provisioner_outbox``: messages to send (email or signed webhook), written in the
  same transaction as the state change that caused them and sent later by
  :func:`provisioner.outbox.send_pending`. ``dedupe_key`` is unique: one message per key,
  ever.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from provisioner.models import Base, UTCDateTime, utcnow

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
