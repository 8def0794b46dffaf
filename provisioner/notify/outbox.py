"""Send what :mod:`provisioner.notify` queued: ``send_pending(sessions, notify_settings, now) -> SendReport``.

One pass, called by the worker every minute (and by ``provisioner job send_outbox``):

1. Rows left in ``sending`` past their lease (a worker died mid-send) go back to
   ``pending`` (or to ``failed`` when they have used up ``notify.max_attempts``).
2. Due ``pending`` rows of the configured channels are claimed one by one with a
   compare-and-set ``UPDATE … SET status='sending', attempts=attempts+1, lease_until=…
   WHERE id=? AND status='pending' AND attempts=?`` committed *before* anything is sent:
   the attempt is on record first, and two workers never send one row.
3. The message goes out: email through :mod:`provisioner.cloud.mail`, webhook as a JSON
   POST (10 s timeout) signed ``X-Provisioner-Signature: t=<unix>,v1=<hex>`` where hex is
   HMAC-SHA256(key=notify.webhook_secret, msg=f"{t}.{raw body}").
4. The row becomes ``sent``; or, on failure, ``pending`` again with ``next_attempt_at``
   pushed by the product's one backoff rule (:func:`provisioner.cloud.retry.backoff`: about
   1, 2, 4 … minutes with jitter, at most 1 hour); after
   ``notify.max_attempts`` attempts, or at once on a permanent refusal (SMTP 5xx for the
   recipient or the message), ``failed`` and logged at ERROR. Nothing is deleted.

Email rows wait (stay ``pending``, logged once per process) while ``notify.smtp_host`` is
empty, webhook rows while ``notify.webhook_url`` is empty.

Delivery is at least once: a worker that dies after the server accepted a message but
before the row says ``sent`` re-sends it after the lease. Each email carries a
``Message-ID`` derived from its ``dedupe_key`` and each webhook an ``X-Provisioner-Delivery``
id, so a receiver can drop such a twin.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.cloud import retry
from provisioner.cloud.mail import MailError, MailPermanent, SmtpConfig, SmtpMailer
from provisioner.models import EMAIL, FAILED, PENDING, SENDING, SENT, WEBHOOK, OutboxMessage
from provisioner.settings.schema import NotifySettings

log = logging.getLogger(__name__)

LEASE = dt.timedelta(minutes=5)
BACKOFF_BASE = dt.timedelta(minutes=1)
BACKOFF_CAP = dt.timedelta(hours=1)
WEBHOOK_TIMEOUT_SECONDS = 10.0
SIGNATURE_HEADER = "X-Provisioner-Signature"
WEBHOOK_SUFFIX = ":webhook"     # notify.enqueue keys the webhook copy f"{dedupe_key}:webhook"

_said_waiting: set[str] = set()
# Python folds a long Subject right after "Subject:" at 78 columns; readers then see a
# leading space. RFC 5322 allows 998; our subjects stay far below that.
_POLICY = email.policy.default.clone(max_line_length=200)


@dataclass
class SendReport:
    sent: int = 0
    retried: int = 0          # failed this time, scheduled again
    failed: int = 0           # given up (max attempts or permanent refusal)
    waiting: int = 0          # due but their channel is not configured
    recovered: int = 0        # taken back from a worker that died mid-send

    @property
    def did_work(self) -> bool:
        return bool(self.sent or self.retried or self.failed or self.recovered)

    def summary(self) -> str:
        return (f"{self.sent} sent, {self.retried} to retry, {self.failed} failed, {self.waiting} waiting for "
                f"their channel's settings, {self.recovered} recovered")


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    channel: str
    recipient: str
    language: str
    subject: str
    body: str
    payload: dict[str, Any]
    dedupe_key: str
    attempts: int
    created_at: dt.datetime


class DeliveryError(Exception):
    """A webhook delivery failed; always retried until max attempts."""


def backoff(attempts: int) -> dt.timedelta:
    """How long a message waits after its ``attempts``-th failed attempt (jitter included)."""
    return dt.timedelta(seconds=retry.backoff(attempts, BACKOFF_BASE.total_seconds(), BACKOFF_CAP.total_seconds()))


def send_pending(sessions: sessionmaker[Session], notify: NotifySettings, now: dt.datetime, limit: int = 100, *,
                 mailer: SmtpMailer | None = None, http: httpx.Client | None = None) -> SendReport:
    report = SendReport(recovered=recover_expired(sessions, now, notify.max_attempts))
    channels = [c for c, on in ((EMAIL, bool(notify.smtp_host)), (WEBHOOK, bool(notify.webhook_url))) if on]
    _note_waiting(sessions, now, report, {EMAIL: notify.smtp_host, WEBHOOK: notify.webhook_url})
    if not channels:
        return report
    with sessions() as s:
        due = list(s.execute(
            select(OutboxMessage.id, OutboxMessage.attempts)
            .where(OutboxMessage.status == PENDING, OutboxMessage.next_attempt_at <= now,
                   OutboxMessage.channel.in_(channels))
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)).all())
    if not due:
        return report
    mailer = mailer or mailer_for(notify)
    own_http = http is None
    client = http or httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False)
    try:
        for row_id, attempts in due:
            msg = claim(sessions, row_id, attempts, now)
            if msg is None:
                continue          # another worker got it first
            try:
                if msg.channel == EMAIL:
                    mailer.send(email_message(msg, notify.from_address, now))
                else:
                    post_webhook(client, notify.webhook_url, notify.webhook_secret, msg, now)
            except (MailError, DeliveryError) as exc:
                permanent = isinstance(exc, MailPermanent)
                if finish_failed(sessions, msg, now, str(exc), permanent=permanent,
                                 max_attempts=notify.max_attempts):
                    report.failed += 1
                else:
                    report.retried += 1
                continue
            finish_sent(sessions, msg, now)
            report.sent += 1
    finally:
        if own_http:
            client.close()
    return report


def mailer_for(notify: NotifySettings) -> SmtpMailer:
    return SmtpMailer(SmtpConfig(host=notify.smtp_host, port=notify.smtp_port, security=notify.smtp_security,
                                 username=notify.smtp_username, password=notify.smtp_password))


def recover_expired(sessions: sessionmaker[Session], now: dt.datetime, max_attempts: int) -> int:
    with sessions.begin() as s:
        stuck = (OutboxMessage.status == SENDING, OutboxMessage.lease_until <= now)
        gone = s.execute(update(OutboxMessage).where(*stuck, OutboxMessage.attempts >= max_attempts)
                         .values(status=FAILED, lease_until=None,
                                 last_error="the sender died mid-send (lease expired); no attempts left"))
        back = s.execute(update(OutboxMessage).where(*stuck)
                         .values(status=PENDING, lease_until=None, next_attempt_at=now))
    n_gone = int(getattr(gone, "rowcount", 0) or 0)
    n_back = int(getattr(back, "rowcount", 0) or 0)
    if n_gone:
        log.error("outbox: %d message(s) failed: their sender died mid-send and no attempts are left", n_gone)
    if n_back:
        log.warning("outbox: %d message(s) taken back from a sender that died mid-send", n_back)
    return n_gone + n_back


def claim(sessions: sessionmaker[Session], row_id: int, attempts: int, now: dt.datetime) -> Claimed | None:
    """Compare-and-set pending → sending, counting the attempt; None if someone else won."""
    with sessions.begin() as s:
        result = s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row_id, OutboxMessage.status == PENDING, OutboxMessage.attempts == attempts)
            .values(status=SENDING, attempts=attempts + 1, lease_until=now + LEASE)
            .execution_options(synchronize_session=False))
        if getattr(result, "rowcount", 0) != 1:
            return None
        row = s.get(OutboxMessage, row_id, populate_existing=True)
        if row is None:
            return None
        return Claimed(id=row.id, kind=row.kind, channel=row.channel, recipient=row.recipient,
                       language=row.language, subject=row.subject, body=row.body, payload=dict(row.payload or {}),
                       dedupe_key=row.dedupe_key, attempts=row.attempts, created_at=row.created_at)


def _mine(msg: Claimed) -> tuple[Any, ...]:
    return (OutboxMessage.id == msg.id, OutboxMessage.status == SENDING, OutboxMessage.attempts == msg.attempts)


def finish_sent(sessions: sessionmaker[Session], msg: Claimed, now: dt.datetime) -> None:
    with sessions.begin() as s:
        result = s.execute(update(OutboxMessage).where(*_mine(msg))
                           .values(status=SENT, sent_at=now, lease_until=None, last_error=None))
    if getattr(result, "rowcount", 0) != 1:
        log.warning("outbox: message %d was sent but its lease had been taken over; it may go out twice", msg.id)
    log.info("outbox: sent %s #%d (%s) attempt %d", msg.kind, msg.id, msg.channel, msg.attempts)


def finish_failed(sessions: sessionmaker[Session], msg: Claimed, now: dt.datetime, error: str, *,
                  permanent: bool, max_attempts: int) -> bool:
    """Schedule a retry, or give up; True when the row is now ``failed``."""
    give_up = permanent or msg.attempts >= max_attempts
    values: dict[str, Any] = {"lease_until": None, "last_error": error[:2000]}
    if give_up:
        values["status"] = FAILED
    else:
        values.update(status=PENDING, next_attempt_at=now + backoff(msg.attempts))
    with sessions.begin() as s:
        s.execute(update(OutboxMessage).where(*_mine(msg)).values(**values))
    if give_up:
        log.error("outbox: giving up on %s #%d (%s) after %d attempt(s): %s", msg.kind, msg.id, msg.channel,
                  msg.attempts, error)
    else:
        log.warning("outbox: %s #%d (%s) attempt %d failed, retrying at %s: %s", msg.kind, msg.id, msg.channel,
                    msg.attempts, values["next_attempt_at"].isoformat(timespec="seconds"), error)
    return give_up


def _note_waiting(sessions: sessionmaker[Session], now: dt.datetime, report: SendReport,
                  configured: dict[str, str]) -> None:
    idle = [c for c, value in configured.items() if not value]
    if not idle:
        return
    with sessions() as s:
        counts = dict(s.execute(
            select(OutboxMessage.channel, func.count()).where(
                OutboxMessage.status == PENDING, OutboxMessage.next_attempt_at <= now,
                OutboxMessage.channel.in_(idle)).group_by(OutboxMessage.channel)).tuples().all())
    report.waiting = sum(counts.values())
    for channel in idle:  # per channel: email waiting says nothing about the webhook
        if counts.get(channel) and channel not in _said_waiting:
            _said_waiting.add(channel)
            setting = "notify.smtp_host" if channel == EMAIL else "notify.webhook_url"
            log.warning("outbox: %d %s message(s) waiting: %s is not set (they are kept and sent once it is)",
                        counts[channel], channel, setting)


def email_message(msg: Claimed, from_address: str, now: dt.datetime) -> EmailMessage:
    em = EmailMessage(policy=_POLICY)
    em["From"] = from_address
    em["To"] = msg.recipient
    em["Subject"] = msg.subject
    em["Date"] = format_datetime(now.astimezone(dt.UTC))
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "provisioner.invalid"
    em["Message-ID"] = f"<{hashlib.sha256(msg.dedupe_key.encode()).hexdigest()[:32]}@{domain}>"
    em["Auto-Submitted"] = "auto-generated"
    em["X-Provisioner-Kind"] = msg.kind
    em.set_content(msg.body)
    em["Content-Language"] = msg.language      # after set_content, which drops Content-* headers
    return em


def webhook_body(msg: Claimed) -> bytes:
    doc = {"id": f"ob_{msg.id}", "kind": msg.kind, "dedupe_key": msg.dedupe_key.removesuffix(WEBHOOK_SUFFIX),
           "language": msg.language,
           "created_at": msg.created_at.isoformat(), "subject": msg.subject, "data": msg.payload}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def post_webhook(client: httpx.Client, url: str, secret: str, msg: Claimed, now: dt.datetime) -> None:
    body = webhook_body(msg)
    headers = {"Content-Type": "application/json", "X-Provisioner-Delivery": f"ob_{msg.id}",
               "X-Provisioner-Event": msg.kind, "User-Agent": "provisioner-outbox"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret, int(now.timestamp()))
    try:
        reply = client.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook: {type(exc).__name__}") from None
    if not 200 <= reply.status_code < 300:
        raise DeliveryError(f"webhook answered HTTP {reply.status_code}")


def requeue_failed(sessions: sessionmaker[Session], now: dt.datetime, ids: list[int] | None = None) -> list[int]:
    """Give ``failed`` messages a fresh set of attempts (an operator fixed SMTP or the webhook).

    ``ids=None`` takes every failed message. Named ids must all exist and all be ``failed``,
    or nothing changes (ValueError says which): a ``sent`` message is never sent again, and
    one still ``pending``/``sending`` is already on its way.
    """
    with sessions.begin() as s:
        query = select(OutboxMessage.id, OutboxMessage.status)
        if ids is not None:
            query = query.where(OutboxMessage.id.in_(ids))
        else:
            query = query.where(OutboxMessage.status == FAILED)
        found = dict(s.execute(query).tuples().all())
        if ids is not None:
            missing = sorted(set(ids) - set(found))
            if missing:
                raise ValueError(f"no outbox message with id {', '.join(map(str, missing))}")
            not_failed = sorted(i for i, st in found.items() if st != FAILED)
            if not_failed:
                raise ValueError("only failed messages can be retried; "
                                 + ", ".join(f"#{i} is {found[i]}" for i in not_failed))
        chosen = sorted(found)
        if chosen:
            s.execute(update(OutboxMessage)
                      .where(OutboxMessage.id.in_(chosen), OutboxMessage.status == FAILED)
                      .values(status=PENDING, attempts=0, next_attempt_at=now, lease_until=None)
                      .execution_options(synchronize_session=False))
    if chosen:
        log.info("outbox: %d failed message(s) queued again by an operator: %s", len(chosen),
                 ", ".join(f"#{i}" for i in chosen))
    return chosen
