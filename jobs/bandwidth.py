"""Monthly bandwidth: sync the counters from Vultr, alert at 80 % / 100 %, apply the cap, reset.

Which month a byte belongs to is :mod:`provisioner.bandwidth`'s rule (the UTC month of the
UTC day Vultr counted it in), shared with the rebuild's ``carry`` step. The seed's reset
job runs at 00:00 New York on the 1st, which is 04:00/05:00 UTC: by then the UTC month has
already turned, and a sync that runs first rolls a row over
by itself (same code), so nothing depends on which job runs first.

``bandwidth_this_month = bandwidth_carried + the current instance's total this month``,
where ``bandwidth_carried`` holds earlier instances of this month (added by each
rebuild). It never decreases within a month (mid-rebuild, the old instance's bytes are
not yet carried and the new one has none).

Thresholds are ``bandwidth_limit_this_month`` (or, if it is 0, the product's cap).
Crossing 80 % and 100 % each writes one ``ServerEvent`` and one ``on_event`` call per
month (``bandwidth_alerted`` 0 → 80 → 100; a sync that jumps straight past 100 % records
only the 100 % one). At 100 % the product's ``cap_policy`` applies: ``notify`` does
nothing more; ``suspend`` halts the instance (status ``Suspended``,
``suspended_by_cap``). The cap is level-triggered: a suspended server still over its
limit is halted again if found running, and one no longer over it (a new month, or the
operator raised the limit) is started again.

``on_event(session, server, kind, context)`` is the notification hook, called inside the
row's transaction (so an outbox row commits with the event), with the context keys
``provisioner.notify`` accepts for each kind (``month`` is "YYYY-MM", bytes unconverted)::

    bandwidth_80     month, used_bytes, cap_bytes, percent
    bandwidth_100    month, used_bytes, cap_bytes, percent, suspended (cap_policy is "suspend")
    bandwidth_reset  month, cap_bytes -- once a month for a server that was alerted last
                     month, when its counter starts again (for one suspended by the cap:
                     when it has been started again)

It defaults to a no-op; if it raises, the error is logged and the sync goes on.

Each sync also keeps the current instance's bytes per UTC day of the month
(:func:`provisioner.bandwidth.record_days`) for the customer's usage chart.

Every row is read fresh (without its sealed secrets and ``.ovpn``) and committed on its
own; a row changed by someone else meanwhile (``StaleDataError``) or held by a lifecycle
worker right now is skipped this round. One server's API failure is logged, recorded as an
event, and the rest go on.

At scale (:func:`sync_bandwidth_paced`, what the worker runs): one Vultr call per server
cannot all fit in an hour at 100,000 servers without eating the account's whole budget
(30 requests/s). The job gets a share of it (:class:`SyncPace`, 25 %): it reads at most
``share x rate x period`` rows per run, spread over the period by its own token bucket,
with a few threads, rows near their cap first, then the least recently synced. At 10,000
servers every row is read every hour; at 100,000 each row every few hours, and the ones
close to their cap every hour.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Protocol

from sqlalchemy import and_, case, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from provisioner.bandwidth import month_of, month_total, record_days
from provisioner.cloud.ratelimit import RateLimiter
from provisioner.cloud.vultr import VultrError, VultrNotFound
from provisioner.models import LIVE_STATUSES, WITHOUT_SEALED, Server, ServerEvent, Status
from provisioner.settings.schema import Product

log = logging.getLogger(__name__)

ACTOR = "bandwidth"
SYNCED = (Status.RUNNING.value, Status.SUSPENDED.value, Status.REBUILDING.value)

OnEvent = Callable[[Session, Server, str, dict[str, Any]], None]


class BandwidthCloud(Protocol):
    """What these jobs need of :class:`provisioner.cloud.vultr.VultrCloud`."""

    def bandwidth(self, instance_id: str) -> dict[dt.date, tuple[int, int]]: ...
    def get_instance(self, instance_id: str) -> Any: ...
    def halt_instance(self, instance_id: str) -> None: ...
    def start_instance(self, instance_id: str) -> None: ...


@dataclass
class BandwidthReport:
    """What one sync or reset did (counts); the worker logs it and ``provisioner status`` shows it."""

    job: str                # sync | reset
    month: str              # the UTC month the counters are on
    checked: int = 0        # rows looked at
    updated: int = 0        # rows whose counter moved (sync)
    reset: int = 0          # rows moved to this month (by the reset, or by a sync that ran first)
    alerted_80: int = 0
    alerted_100: int = 0
    suspended: int = 0
    resumed: int = 0
    failed: int = 0         # provider errors (each also a ServerEvent)
    skipped: int = 0        # busy with a lifecycle step, or changed under us

    @property
    def did_work(self) -> bool:
        return bool(self.updated or self.reset or self.alerted_80 or self.alerted_100 or self.suspended
                    or self.resumed)

    def summary(self) -> str:
        return (f"{self.month}: {self.checked} checked, {self.updated} updated, {self.reset} reset, "
                f"{self.alerted_80 + self.alerted_100} alerted, {self.suspended} suspended, {self.resumed} resumed, "
                f"{self.failed} failed, {self.skipped} skipped")


SyncReport = ResetReport = BandwidthReport


def _no_event(session: Session, server: Server, kind: str, context: dict[str, Any]) -> None:
    return None


def _guarded(hook: OnEvent | None) -> OnEvent:
    """The hook, such that its failure costs one notification, never the sync of every other server."""
    if hook is None:
        return _no_event

    def call(session: Session, server: Server, kind: str, context: dict[str, Any]) -> None:
        try:
            hook(session, server, kind, context)
        except Exception:  # noqa: BLE001 - a notification bug must not stop the cap; it is logged in full
            log.exception("server=%s: notification hook failed for %s", _name(server), kind)

    return call


def sync_bandwidth(session: Session, vultr: BandwidthCloud, now: dt.datetime, products: Mapping[str, Product],
                   *, on_event: OnEvent | None = None) -> BandwidthReport:
    """Read every instance's counters, update the rows, alert and apply the cap."""
    if now.tzinfo is None:
        raise ValueError("sync_bandwidth() needs an aware datetime")
    notify = _guarded(on_event)
    report = BandwidthReport(job="sync", month=month_of(now))
    ids = list(session.scalars(select(Server.id).where(Server.status.in_(SYNCED), Server.instance_id.is_not(None))
                               .order_by(Server.id)))
    for rid in ids:
        report.checked += 1
        _sync_unless_changed(session, vultr, rid, now, products, notify, report)
    if report.did_work or report.failed:
        log.info("bandwidth sync %s: %s", report.month, report)
    return report


@dataclass(frozen=True)
class SyncPace:
    """How much of Vultr's budget one sync may spend, and how."""

    calls_per_second: float     # this job's own ceiling: a share of the account's rate
    max_rows: int               # rows read in one run (one call each)
    threads: int = 4

    @classmethod
    def for_period(cls, provider_rate: float, period_seconds: float, *, share: float = 0.25, threads: int = 4,
                   fill: float = 0.9) -> SyncPace:
        """``share`` of ``provider_rate``, for ``fill`` of the period (so a run ends before the next)."""
        rate = max(0.01, provider_rate * share)
        return cls(rate, max(1, int(rate * period_seconds * fill)), max(1, threads))


# Rows at 70 % of their month's limit or more are read first: they are the ones an alert or the
# cap may be about to concern. Then the least recently read (never read sorts first: NULLs
# come first in ascending order on SQLite and MySQL alike).
_NEAR_CAP_FIRST = case((and_(Server.bandwidth_limit_this_month > 0,
                             Server.bandwidth_this_month * 10 >= Server.bandwidth_limit_this_month * 7), 0), else_=1)


def rows_to_sync(session: Session, limit: int) -> list[int]:
    """The ids one paced run reads, in order (one query, ids only)."""
    return list(session.scalars(
        select(Server.id).where(Server.status.in_(SYNCED), Server.instance_id.is_not(None))
        .order_by(_NEAR_CAP_FIRST, Server.bandwidth_synced_at, Server.id).limit(limit)))


def sync_bandwidth_paced(sessions: sessionmaker[Session], vultr: BandwidthCloud, now: dt.datetime,
                         products: Mapping[str, Product], pace: SyncPace, *, on_event: OnEvent | None = None,
                         stop: threading.Event | None = None) -> BandwidthReport:
    """:func:`sync_bandwidth` for a large fleet: at most ``pace.max_rows`` rows, at most
    ``pace.calls_per_second`` Vultr calls a second, ``pace.threads`` at a time, each row in its
    own session. ``stop`` (the worker shutting down) ends the run at the next row."""
    if now.tzinfo is None:
        raise ValueError("sync_bandwidth_paced() needs an aware datetime")
    notify = _guarded(on_event)
    report = BandwidthReport(job="sync", month=month_of(now))
    with sessions() as s:
        ids = rows_to_sync(s, pace.max_rows)
    bucket = RateLimiter(pace.calls_per_second, burst=1, name="bandwidth sync")
    lock = threading.Lock()

    def one(rid: int) -> None:
        if stop is not None and stop.is_set():
            return
        bucket.acquire()
        mine = BandwidthReport(job="sync", month=report.month, checked=1)
        with sessions() as session:
            _sync_unless_changed(session, vultr, rid, now, products, notify, mine)
        with lock:
            _add(report, mine)

    with ThreadPoolExecutor(max_workers=pace.threads, thread_name_prefix="bandwidth") as pool:
        for future in [pool.submit(one, rid) for rid in ids]:
            future.result()
    if report.did_work or report.failed:
        log.info("bandwidth sync %s: %s", report.month, report)
    return report


def _add(total: BandwidthReport, part: BandwidthReport) -> None:
    for f in fields(BandwidthReport):
        if f.type in ("int", int):
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def reset_bandwidth_monthly(session: Session, vultr: BandwidthCloud, now: dt.datetime, *,
                            products: Mapping[str, Product] | None = None,
                            on_event: OnEvent | None = None) -> BandwidthReport:
    """The seed's reset_bandwidth_monthly.py: start the month for every live row.

    Zeroes ``bandwidth_this_month``, ``bandwidth_carried`` and ``bandwidth_alerted`` of
    rows still on an earlier month, and starts servers suspended by the cap. With
    ``products``, the month's limit is refreshed from the product's cap. Running it again
    in the same month changes nothing (a start that failed is retried).
    """
    if now.tzinfo is None:
        raise ValueError("reset_bandwidth_monthly() needs an aware datetime")
    notify = _guarded(on_event)
    report = BandwidthReport(job="reset", month=month_of(now))
    ids = list(session.scalars(select(Server.id).where(Server.status.in_(LIVE_STATUSES)).order_by(Server.id)))
    for rid in ids:
        report.checked += 1
        try:
            row = session.get(Server, rid, populate_existing=True, options=[WITHOUT_SEALED])
            if row is None or row.status not in LIVE_STATUSES:
                continue
            if _busy(row, now):
                report.skipped += 1
                continue
            if _roll_over(session, row, report.month, now, products, notify, refresh_limit=True):
                report.reset += 1
            session.commit()
            limit = _limit(row, products or {})
            under = not limit or row.bandwidth_this_month < limit  # a re-run mid-month keeps the cap
            if row.suspended_by_cap and row.status == Status.SUSPENDED.value and not row.action and under:
                if _resume(session, vultr, row, now, report.month, products, notify):
                    report.resumed += 1
                else:
                    report.failed += 1
        except StaleDataError:
            session.rollback()
            report.skipped += 1
            log.info("server #%s changed during the monthly reset; next round", rid)
    log.info("bandwidth reset for %s: %s", report.month, report)
    return report


# --- one row ---------------------------------------------------------------------------------------

def _sync_unless_changed(session: Session, vultr: BandwidthCloud, rid: int, now: dt.datetime,
                         products: Mapping[str, Product], notify: OnEvent, report: BandwidthReport) -> None:
    try:
        _sync_one(session, vultr, rid, now, products, notify, report)
    except StaleDataError:
        session.rollback()
        report.skipped += 1
        log.info("server #%s changed during the bandwidth sync; next round", rid)


def _sync_one(session: Session, vultr: BandwidthCloud, rid: int, now: dt.datetime,
              products: Mapping[str, Product], notify: OnEvent, report: BandwidthReport) -> None:
    row = session.get(Server, rid, populate_existing=True, options=[WITHOUT_SEALED])
    if row is None or row.status not in SYNCED or not row.instance_id:
        return
    if _busy(row, now):
        report.skipped += 1
        return
    month = report.month
    instance_id = row.instance_id
    try:
        days = vultr.bandwidth(instance_id)
    except VultrError as exc:
        _failed(session, row, now, f"reading the bandwidth of instance {instance_id}: {exc}")
        report.failed += 1
        return
    if _roll_over(session, row, month, now, products, notify):
        report.reset += 1
    used = max(row.bandwidth_this_month, row.bandwidth_carried + month_total(days, month))
    if used != row.bandwidth_this_month:
        report.updated += 1
    row.bandwidth_this_month, row.bandwidth_synced_at = used, now
    record_days(session, row.id, instance_id, days, month)   # the customer's daily usage chart
    limit, policy = _limit(row, products), _policy(row, products)
    percent = used * 100 // limit if limit else 0
    for level in (100, 80):
        if limit and used * 100 >= limit * level and row.bandwidth_alerted < level:
            row.bandwidth_alerted = level
            _event(session, row, now, f"bandwidth.{level}", "info",
                   f"{_gb(used)} of {_gb(limit)} used in {month} ({percent}%)")
            context: dict[str, Any] = {"month": month, "used_bytes": used, "cap_bytes": limit, "percent": percent}
            if level == 100:
                context["suspended"] = policy == "suspend"
            notify(session, row, f"bandwidth_{level}", context)
            setattr(report, f"alerted_{level}", getattr(report, f"alerted_{level}") + 1)
            break
    session.commit()

    over = bool(limit) and used >= limit
    if row.action:
        return  # a rebuild or destroy in progress: the cap is applied once it is idle
    if over and policy == "suspend":
        if row.status == Status.RUNNING.value and not row.suspended_by_cap:
            if _suspend(session, vultr, row, now, f"{_gb(used)} of {_gb(limit)} used in {month}"):
                report.suspended += 1
            else:
                report.failed += 1
        elif row.suspended_by_cap and row.status == Status.SUSPENDED.value:
            _keep_halted(session, vultr, row, now)
    elif not over and row.suspended_by_cap and row.status == Status.SUSPENDED.value:
        if _resume(session, vultr, row, now, month, products, notify):
            report.resumed += 1
        else:
            report.failed += 1


def _roll_over(session: Session, row: Server, month: str, now: dt.datetime, products: Mapping[str, Product] | None,
               notify: OnEvent, *, refresh_limit: bool = False) -> bool:
    """Put the row's counters on ``month``; True if anything changed.

    ``refresh_limit``: take the month's limit from the product's cap (the reset job, when
    given the products).

    Also rolls a row whose counters were last synced in an earlier month even though
    ``bandwidth_month`` already says ``month``: a rebuild's carry step that ran first in
    the new month sets the month and the carried bytes (kept), but not the rest.
    """
    synced_elsewhere = row.bandwidth_synced_at is not None and month_of(row.bandwidth_synced_at) != month
    if row.bandwidth_month == month and not synced_elsewhere:
        return False
    before = (row.bandwidth_month, row.bandwidth_this_month, row.bandwidth_carried, row.bandwidth_alerted)
    previous = month_of(row.bandwidth_synced_at) if synced_elsewhere and row.bandwidth_synced_at else before[0]
    if row.bandwidth_month != month:
        row.bandwidth_carried = 0
    row.bandwidth_month = month
    row.bandwidth_this_month = row.bandwidth_carried
    row.bandwidth_alerted = 0
    product = products.get(row.product_id) if products is not None else None
    if refresh_limit and product is not None:
        row.bandwidth_limit_this_month = product.bandwidth_cap_bytes
    if before[0] is None:  # a new row's first month: nothing to announce
        return False
    if before == (row.bandwidth_month, row.bandwidth_this_month, row.bandwidth_carried, row.bandwidth_alerted):
        return False
    _event(session, row, now, "bandwidth.reset", "info", f"month {month} started ({previous}: {_gb(before[1])} used)")
    if before[3] and not row.suspended_by_cap:  # one suspended by the cap is told once it runs again
        notify(session, row, "bandwidth_reset", {"month": month, "cap_bytes": _limit(row, products or {})})
    return True


def _suspend(session: Session, vultr: BandwidthCloud, row: Server, now: dt.datetime, why: str) -> bool:
    # The intent is committed first: a crash after the halt leaves a Suspended row, never
    # a halted server the dashboard shows as Running (and _keep_halted finishes the job).
    instance_id = row.instance_id or ""
    row.status, row.suspended_by_cap = Status.SUSPENDED.value, True
    _event(session, row, now, "bandwidth.suspend", "started",
           f"cap reached ({why}): halting {instance_id}")
    session.commit()
    try:
        vultr.halt_instance(instance_id)
    except VultrError as exc:
        row.status, row.suspended_by_cap = Status.RUNNING.value, False
        _event(session, row, now, "bandwidth.suspend", "failed", f"halting instance {instance_id}: {exc}")
        session.commit()
        log.warning("server=%s: could not halt instance %s at the bandwidth cap: %s", _name(row), instance_id, exc)
        return False
    _event(session, row, now, "bandwidth.suspend", "ok", f"instance {instance_id} halted until the cap resets")
    session.commit()
    log.warning("server=%s suspended at the bandwidth cap: %s", _name(row), why)
    return True


def _keep_halted(session: Session, vultr: BandwidthCloud, row: Server, now: dt.datetime) -> None:
    instance_id = row.instance_id or ""
    try:
        if vultr.get_instance(instance_id).power_status == "stopped":
            return
        vultr.halt_instance(instance_id)
    except VultrError as exc:
        log.warning("server=%s: could not check/halt suspended instance %s: %s", _name(row), instance_id, exc)
        return
    _event(session, row, now, "bandwidth.suspend", "ok", f"instance {instance_id} was running again; halted")
    session.commit()


def _resume(session: Session, vultr: BandwidthCloud, row: Server, now: dt.datetime, month: str,
            products: Mapping[str, Product] | None, notify: OnEvent) -> bool:
    instance_id = row.instance_id or ""
    try:
        if instance_id:
            vultr.start_instance(instance_id)
    except VultrNotFound:
        pass  # nothing to start; the row is not blocked by the cap any more either way
    except VultrError as exc:
        _failed(session, row, now, f"starting instance {instance_id} after the cap: {exc}")
        return False
    row.status, row.suspended_by_cap = Status.RUNNING.value, False
    _event(session, row, now, "bandwidth.resume", "ok", f"instance {instance_id} started: {month} is under the cap")
    notify(session, row, "bandwidth_reset", {"month": month, "cap_bytes": _limit(row, products or {})})
    session.commit()
    log.info("server=%s running again: %s is under the bandwidth cap", _name(row), month)
    return True


# --- helpers ------------------------------------------------------------------------------------------

def _busy(row: Server, now: dt.datetime) -> bool:
    """A lifecycle worker holds the row right now: writing would make it lose its claim."""
    return row.lease_owner is not None and row.lease_until is not None and row.lease_until > now


def _limit(row: Server, products: Mapping[str, Product]) -> int:
    if row.bandwidth_limit_this_month:
        return row.bandwidth_limit_this_month
    product = products.get(row.product_id)
    return product.bandwidth_cap_bytes if product else 0


def _policy(row: Server, products: Mapping[str, Product]) -> str:
    product = products.get(row.product_id)
    return product.cap_policy if product else "notify"


def _failed(session: Session, row: Server, now: dt.datetime, detail: str) -> None:
    log.warning("server=%s bandwidth: %s", _name(row), detail)
    session.rollback()
    session.add(ServerEvent(server_id=row.id, at=now, actor=ACTOR, what="bandwidth.sync", outcome="failed",
                            detail=detail[:2000]))
    session.commit()


def _event(session: Session, row: Server, now: dt.datetime, what: str, outcome: str, detail: str) -> None:
    session.add(ServerEvent(server_id=row.id, at=now, actor=ACTOR, what=what, outcome=outcome, detail=detail[:2000]))


def _name(row: Server) -> str:
    return row.server_name or f"#{row.id}"


def _gb(n: int) -> str:
    return f"{n / 1000**3:.2f} GB"
