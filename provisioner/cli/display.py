"""Human-readable and JSON renderings of plans, servers, events and the outbox for the CLI."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # renders objects it is handed; importing their modules would slow --help
    from provisioner.models import OutboxMessage, Server, ServerEvent
    from provisioner.reconcile import Plan


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def when(value: dt.datetime | None) -> str:
    """A UTC time as the tables show it; empty for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def plan_text(p: Plan) -> str:
    out: list[str] = []
    out.append(f"build    {len(p.build):>4}  " + ", ".join(f"subscription {s.id} ({s.email})" for s in p.build))
    out.append(f"destroy  {len(p.destroy):>4}  " + ", ".join(s.label for s in p.destroy))
    out.append(f"rebuild  {len(p.rebuild):>4}  " + ", ".join(s.label for s in p.rebuild))
    out.append(f"resume   {len(p.resume):>4}  " + ", ".join(s.label for s in p.resume))
    for h in p.held:
        out.append(f"held: {h['reason']}")
    for label, until in sorted(p.waiting.items(), key=lambda kv: kv[1]):
        out.append(f"waiting: server {label}: its subscription ended; destroyed after {when(until)} UTC (the grace)")
    if p.unconfigured:
        out.append(f"unconfigured products (ignored): subscription {', '.join(p.unconfigured)}")
    if p.empty and not p.held:
        out.append("nothing to do")
    return "\n".join(line.rstrip() for line in out)


def server_json(r: Server) -> dict[str, Any]:
    return {
        "id": r.id, "name": r.server_name, "subscription_id": r.subscription_id, "customer_id": r.customer_id,
        "product_id": r.product_id, "email": r.user_email, "status": r.status, "step": r.step,
        "location": r.current_location, "ip": r.server_ip, "schedule": r.rebuild_schedule,
        "schedule_location": r.rebuild_schedule_location, "bandwidth_used": r.bandwidth_this_month,
        "bandwidth_limit": r.bandwidth_limit_this_month, "last_error": r.last_error,
        "needs_human": bool(r.needs_human), "paused": bool(r.paused),
        "operator_hold": {"since": r.operator_hold_at.isoformat(), "reason": r.operator_hold_reason}
        if r.operator_hold_at else None,
        "note": attention(r),
    }


def attention(r: Server) -> str:
    """What an operator must know about a row at a glance (empty: nothing)."""
    notes = []
    if r.operator_hold_at:
        notes.append(f"held by an operator since {when(r.operator_hold_at)}: {r.operator_hold_reason}")
    if r.paused:
        notes.append("paused by an operator")
    if r.needs_human and r.status != "Destroyed":
        first = (r.last_error or "").splitlines()[0][:100] if r.last_error else "see `provisioner events`"
        notes.append(f"NEEDS A HUMAN: {first}")
    return "; ".join(notes)


def servers_table(rows: Sequence[Server]) -> str:
    if not rows:
        return "no servers yet"
    body = [[r.server_name or f"#{r.id}", r.user_email, r.status + (f" ({r.step})" if r.step else ""),
             r.current_location or "-", r.server_ip or "-",
             r.rebuild_schedule + ("" if r.rebuild_schedule == "none" else f" → {r.rebuild_schedule_location}"),
             f"{human_bytes(r.bandwidth_this_month)} / {human_bytes(r.bandwidth_limit_this_month)}", attention(r)]
            for r in rows]
    headers = ["NAME", "CUSTOMER", "STATUS", "LOCATION", "IP", "SCHEDULE", "BANDWIDTH", "NOTE"]
    if not any(row[-1] for row in body):  # the column only when a row needs you
        headers, body = headers[:-1], [row[:-1] for row in body]
    return table(headers, body)


def event_json(e: ServerEvent) -> dict[str, Any]:
    return {"at": e.at.isoformat(), "actor": e.actor, "what": e.what, "outcome": e.outcome, "detail": e.detail}


def events_table(events: Sequence[ServerEvent]) -> str:
    if not events:
        return "no events"
    return table(["WHEN (UTC)", "ACTOR", "WHAT", "OUTCOME", "DETAIL"],
                 [[when(e.at), e.actor, e.what, e.outcome, e.detail] for e in events])


def outbox_json(m: OutboxMessage) -> dict[str, Any]:
    return {"id": m.id, "kind": m.kind, "channel": m.channel, "recipient": m.recipient, "status": m.status,
            "attempts": m.attempts, "server_id": m.server_id, "created_at": when(m.created_at),
            "next_attempt_at": when(m.next_attempt_at), "sent_at": when(m.sent_at), "last_error": m.last_error}


def outbox_table(messages: Sequence[OutboxMessage]) -> str:
    return table(["ID", "KIND", "CHANNEL", "TO", "STATUS", "TRIES", "CREATED (UTC)", "LAST ERROR"],
                 [[str(m.id), m.kind, m.channel, m.recipient, m.status, str(m.attempts), when(m.created_at),
                   m.last_error.splitlines()[0][:60] if m.last_error else ""] for m in messages])


def health_text(report: dict[str, Any]) -> str:
    lines = [f"{'HEALTHY' if report['healthy'] else 'UNHEALTHY'}"]
    for check in report["checks"]:
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    for key, value in report["facts"].items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
