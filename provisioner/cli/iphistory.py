"""``provisioner ip-history IP [--at TIME]``: which server, customer and subscription held an
address, and when (the answer to an abuse or copyright notice that names an IP and a time)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from provisioner.cli.common import UsageError, make_app, parse_time

if TYPE_CHECKING:
    from provisioner.models import IpHolding


def cmd_ip_history(args: argparse.Namespace) -> int:
    from provisioner import db, ip_history
    from provisioner.cli import display

    try:
        ip = ip_history.normalise(args.ip)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app = make_app(args)
    now = app.clock()
    at = parse_time("--at", args.at, now) if args.at else None
    db.require_schema(app.engine)
    with app.sessions() as s:
        found = ip_history.holdings(s, ip, at)
    if not found:
        days = app.settings.privacy.ip_history_days
        when = f" at {display.when(at)} UTC" if at else ""
        raise UsageError(f"no server of ours held {ip}{when} (holdings are kept {days} days after they end: "
                         "privacy.ip_history_days)")
    if args.json:
        print(json.dumps([holding_json(h) for h in found], indent=2))
    else:
        print(display.table(
            ["IP", "FROM (UTC)", "UNTIL (UTC)", "SERVER", "CUSTOMER", "CUSTOMER ID", "SUBSCRIPTION", "INSTANCE"],
            [[h.ip, display.when(h.held_from), display.when(h.held_until) or "(still held)",
              h.server_name or f"#{h.server_id}", h.user_email, h.customer_id, h.subscription_id, h.instance_id or "-"]
             for h in found]))
    return 0


def holding_json(h: IpHolding) -> dict[str, Any]:
    return {"ip": h.ip, "from": h.held_from.isoformat(), "until": h.held_until.isoformat() if h.held_until else None,
            "server_id": h.server_id, "server": h.server_name, "email": h.user_email, "customer_id": h.customer_id,
            "subscription_id": h.subscription_id, "instance_id": h.instance_id}


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    ih = add("ip-history", cmd_ip_history, "who held a public address when: server, customer and subscription "
             "(for abuse and copyright notices)")
    ih.add_argument("ip", help="the IPv4 or IPv6 address the notice names")
    ih.add_argument("--at", metavar="TIME", help="only the holding at that moment: 2026-03-03T14:02Z (ISO 8601, "
                    "UTC unless it names an offset)")
    ih.add_argument("--json", action="store_true")
