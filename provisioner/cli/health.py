"""`provisioner status`: is the automation itself healthy? It says what is true, or exits 1.

Every check has a stable name (monitoring keys on it), ``ok`` and a one-line ``detail``:

=====================  ==========================================================================
check                  fails when
=====================  ==========================================================================
database               the database cannot be reached, or does not take a write (read-only)
worker_tick            the leader has not planned for 3 ticks (is `provisioner run` running?)
storefront_read        the last pass could not read the storefront, or none did for 2 ticks
storefront_plausible   the last read held implausibly few of our subscriptions (emptied tables)
providers              most of the last 5 minutes' calls to Vultr, Cloudflare, SSH or SMTP failed
jobs                   a job's last run failed, or is older than twice its period (cron runs of
                       `provisioner job NAME` count too)
outbox                 a message failed for good, or waited longer than notify.max_delay_minutes
destroy_breaker        the circuit breaker holds destroys (`provisioner destroys approve`)
destroy_evidence       destroys held for lack of positive evidence (unknown status, no date,
                       a vanished subscription, a cross-check that did not confirm)
needs_human            a server needs a human (`provisioner retry` once the cause is fixed)
action_deadlines       an action is past its step deadline, or started over 2 hours ago
orphans                provider resources carry our tag but belong to no server
=====================  ==========================================================================

The ages come from the database (``action_started_at`` and the step deadlines), never from
lease heartbeats, so a row retried for hours looks its age.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from provisioner import db
from provisioner.models import (
    FAILED,
    PENDING,
    SENDING,
    DestroyHold,
    Orphan,
    OutboxMessage,
    Server,
    Status,
    WorkerStatus,
    as_utc,
)
from provisioner.wiring import App

PROVIDER_WINDOW_MINUTES = 5
PROVIDER_MIN_FAILURES = 3
ACTION_AGE_ALARM = dt.timedelta(hours=2)
CHECKS = ("database", "worker_tick", "storefront_read", "storefront_plausible", "providers", "jobs", "outbox",
          "destroy_breaker", "destroy_evidence", "needs_human", "action_deadlines", "orphans")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def health(app: App) -> dict[str, Any]:
    """The report: ``healthy``, ``checks`` [{name, ok, detail}], ``problems`` (the failing
    details), ``facts`` and ``at``. Never raises for a database fault: that is a check."""
    now = app.clock()
    facts: dict[str, Any] = {}
    database = _database(app)
    if not database.ok:
        checks = [database] + [Check(n, False, "unknown: the database cannot be read") for n in CHECKS[1:]]
        return _report(checks, facts, now)
    try:
        checks = [database, *_checks(app, now, facts)]
    except SQLAlchemyError as exc:
        checks = [Check("database", False, f"the database failed a read: {db.reason(exc)}")]
    return _report(checks, facts, now)


def _report(checks: list[Check], facts: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    problems = [c.detail for c in checks if not c.ok]
    return {"healthy": not problems, "checks": [asdict(c) for c in checks], "problems": problems, "facts": facts,
            "at": now.isoformat()}


def _database(app: App) -> Check:
    """Reachable, and takes a write (rolled back): a read-only database fails here."""
    try:
        with app.engine.connect() as conn:
            with conn.begin() as tx:
                conn.execute(text("INSERT INTO provisioner_worker_status (name, value, updated_at) "
                                  "VALUES ('status:write-probe', '', :at)"),
                             {"at": dt.datetime.now(dt.UTC).replace(tzinfo=None)})
                tx.rollback()
    except SQLAlchemyError as exc:
        return Check("database", False, f"the database does not take writes: {db.reason(exc)}")
    except db.DatabaseUnavailable as exc:
        return Check("database", False, str(exc))
    return Check("database", True, "reachable and takes writes")


def _status(app: App) -> dict[str, tuple[dict[str, Any], dt.datetime]]:
    with app.sessions() as s:
        return {r.name: (_json(r.value), r.updated_at) for r in s.scalars(select(WorkerStatus))}


def _json(value: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _checks(app: App, now: dt.datetime, facts: dict[str, Any]) -> list[Check]:
    status = _status(app)
    tick_seconds = app.settings.worker.tick_seconds
    out: list[Check] = []

    tick, tick_at = status.get("last_tick", ({}, None))
    facts["last tick"] = f"{tick_at:%Y-%m-%d %H:%M:%S} UTC, {tick.get('seconds')}s" if tick_at else "never"
    fresh = tick_at is not None and now - tick_at <= dt.timedelta(seconds=3 * tick_seconds + 30)
    out.append(Check("worker_tick", fresh, f"last planning pass {facts['last tick']}" if fresh else
                     "the worker has not ticked recently (is `provisioner run` running?)"))

    _, store_at = status.get("storefront_ok", ({}, None))
    facts["storefront last read"] = f"{store_at:%Y-%m-%d %H:%M:%S} UTC" if store_at else "never"
    if tick.get("storefront_error"):
        out.append(Check("storefront_read", False, f"the storefront could not be read: {tick['storefront_error']}"))
    elif tick_at and (store_at is None or now - store_at > dt.timedelta(seconds=2 * tick_seconds + 30)):
        out.append(Check("storefront_read", False, "the storefront has not been read successfully recently"))
    else:
        out.append(Check("storefront_read", True, f"last read {facts['storefront last read']}"))

    thin, _ = status.get("storefront_thin", ({}, None))
    out.append(Check("storefront_plausible", not thin,
                     f"the storefront read came back implausibly thin since {thin.get('since')}: {thin.get('reason')}"
                     if thin else "the last read held the subscriptions of our servers"))

    out.append(_providers(status, now, facts))
    out.append(_jobs(app, status, now, facts))
    with app.sessions() as s:
        out.append(_outbox(app, s, now, facts))
        out += _holds(s, facts)
        out += _servers(s, now, tick_seconds, facts)
        orphans = s.scalar(select(func.count()).select_from(Orphan).where(Orphan.deleted_at.is_(None))) or 0
    facts["orphans found (not deleted)"] = orphans
    out.append(Check("orphans", not orphans, f"{orphans} provider resource(s) carry our tag but belong to no server "
                                             "(see the sweeper's log)" if orphans else "none"))
    return out


def _providers(status: dict[str, tuple[dict[str, Any], dt.datetime]], now: dt.datetime,
               facts: dict[str, Any]) -> Check:
    """Failing: a provider's latest calls all failed (a total outage shows at once), or most of
    its calls of the last few minutes did (a flapping one), in any worker or `job` run."""
    since = int(now.timestamp() // 60) - PROVIDER_WINDOW_MINUTES
    totals: dict[str, list[int]] = {}
    streaks: dict[str, int] = {}
    for name, (value, at) in status.items():
        if not name.startswith("worker:") or now - at > dt.timedelta(minutes=2 * PROVIDER_WINDOW_MINUTES):
            continue
        calls = value.get("calls")
        for provider, seen in calls.items() if isinstance(calls, dict) else ():
            total = totals.setdefault(provider, [0, 0])
            for minute, counts in (seen.get("minutes") or {}).items():
                if int(minute) > since and isinstance(counts, list) and len(counts) == 2:
                    total[0] += int(counts[0])
                    total[1] += int(counts[1])
            in_a_row, last = (seen.get("failing") or [0, 0])[:2]
            if now.timestamp() - float(last) <= PROVIDER_WINDOW_MINUTES * 60:
                streaks[provider] = max(streaks.get(provider, 0), int(in_a_row))
    facts["provider calls (last 5 min, ok/failed)"] = ", ".join(
        f"{p} {ok}/{bad}" for p, (ok, bad) in sorted(totals.items())) or "none"
    failing = []
    for p, (ok, bad) in sorted(totals.items()):
        if streaks.get(p, 0) >= PROVIDER_MIN_FAILURES:
            failing.append(f"{p} (its last {streaks[p]} calls failed)")
        elif bad >= PROVIDER_MIN_FAILURES and bad > ok:
            failing.append(f"{p} ({bad} of {ok + bad} calls of the last {PROVIDER_WINDOW_MINUTES} minutes failed)")
    if failing:
        return Check("providers", False, "calls to outside services are failing: " + ", ".join(failing))
    return Check("providers", True, facts["provider calls (last 5 min, ok/failed)"])


def _jobs(app: App, status: dict[str, tuple[dict[str, Any], dt.datetime]], now: dt.datetime,
          facts: dict[str, Any]) -> Check:
    from jobs import registry  # the job catalogue (no scheduler is started)

    _, first_tick = status.get("first_tick", ({}, None))
    bad: list[str] = []
    for name in registry.CLOCK:
        value, at = status.get(f"job:{name}", ({}, None))
        at = _when(value.get("at")) or at          # when the run started, as the worker schedules by it
        facts[f"{name} last ran"] = f"{at:%Y-%m-%d %H:%M:%S} UTC: {value.get('result', '')}" if at else "never"
        period = registry.period(name, app.settings.worker)
        if at is not None and value.get("ok") is False:
            bad.append(f"{name} failed ({value.get('result', '')})")
        elif at is not None and now - at > 2 * period:
            bad.append(f"{name} last ran {at:%Y-%m-%d %H:%M} UTC, more than twice its period ago")
        elif at is None and first_tick is not None and now - first_tick > 2 * period:
            bad.append(f"{name} never ran")
    return Check("jobs", not bad, "; ".join(bad) if bad else "every job ran on time")


def _when(value: Any) -> dt.datetime | None:
    try:
        return as_utc(value) if value else None
    except (TypeError, ValueError):
        return None


def _outbox(app: App, s: Any, now: dt.datetime, facts: dict[str, Any]) -> Check:
    failed = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == FAILED)) or 0
    oldest = as_utc(s.scalar(select(func.min(OutboxMessage.created_at))
                             .where(OutboxMessage.status.in_((PENDING, SENDING)))))
    waiting = s.scalar(select(func.count()).select_from(OutboxMessage)
                       .where(OutboxMessage.status.in_((PENDING, SENDING)))) or 0
    bound = dt.timedelta(minutes=app.settings.notify.max_delay_minutes)
    facts["outbox"] = f"{waiting} waiting, {failed} failed"
    problems = []
    if failed:
        problems.append(f"{failed} message(s) failed for good (`provisioner outbox --status failed`)")
    if oldest is not None and now - oldest > bound:
        problems.append(f"{waiting} message(s) waiting, the oldest since {oldest:%Y-%m-%d %H:%M} UTC "
                        "(is notify.smtp_host / the webhook reachable?)")
    return Check("outbox", not problems, "; ".join(problems) if problems else facts["outbox"])


def _holds(s: Any, facts: dict[str, Any]) -> list[Check]:
    rows = list(s.execute(select(DestroyHold, Server.server_name).join(Server, Server.id == DestroyHold.server_id)
                          .order_by(DestroyHold.since)).tuples())
    breaker = [name or f"#{h.server_id}" for h, name in rows if h.reason_code == "breaker"]
    evidence = [f"{name or f'#{h.server_id}'} ({h.reason_code}: {h.reason})" for h, name in rows
                if h.reason_code != "breaker"]
    facts["destroys held"] = len(rows)
    return [
        Check("destroy_breaker", not breaker,
              f"the circuit breaker holds {len(breaker)} destroy(s): {', '.join(breaker[:20])}; check the storefront, "
              "then `provisioner destroys approve`" if breaker else "holds nothing"),
        Check("destroy_evidence", not evidence,
              f"{len(evidence)} destroy(s) held for lack of evidence: {'; '.join(evidence[:10])}" if evidence
              else "every ended subscription had positive evidence"),
    ]


def _servers(s: Any, now: dt.datetime, tick_seconds: float, facts: dict[str, Any]) -> list[Check]:
    busy = (Server.action.is_not(None), Server.status != Status.DESTROYED.value)
    queued = s.scalar(select(func.count()).select_from(Server).where(*busy)) or 0
    humans = [r or f"#{i}" for i, r in s.execute(select(Server.id, Server.server_name)
                                                 .where(Server.needs_human.is_(True), *busy[1:]))]
    oldest = as_utc(s.scalar(select(func.min(Server.action_started_at)).where(*busy)))
    late = list(s.execute(select(Server.id, Server.server_name, Server.action, Server.step).where(
        *busy, Server.needs_human.is_(False), Server.paused.is_(False),
        Server.step_deadline < now - dt.timedelta(seconds=tick_seconds))).tuples())
    facts["work queued"] = queued
    facts["servers needing a human"] = ", ".join(humans) or "none"
    if oldest is not None:
        facts["oldest unfinished action since"] = f"{oldest:%Y-%m-%d %H:%M:%S} UTC"
    deadline_problems = [f"{name or f'#{i}'} ({action} {step}) is past its step deadline" for i, name, action, step
                         in late]
    if oldest is not None and now - oldest > ACTION_AGE_ALARM:
        deadline_problems.append(f"an action has been unfinished since {oldest:%Y-%m-%d %H:%M} UTC")
    return [
        Check("needs_human", not humans, f"{len(humans)} server(s) need a human: {', '.join(humans[:20])} "
                                         "(`provisioner events NAME` shows why)" if humans else "none"),
        Check("action_deadlines", not deadline_problems,
              "; ".join(deadline_problems[:10]) if deadline_problems else f"{queued} action(s) under way, on time"),
    ]
