"""``provisioner destroys``: the destroys the planner holds, and letting breaker-held ones go.

The planner destroys a server only on aged, positive evidence, and at most so many in a
rolling window (the circuit breaker). What it holds is listed here with the reason; those
held by the breaker go once an operator approves them (audited as ``destroy.approved``),
at the next planning pass (asked for at once). Those held for lack of evidence are never
approved here: check the storefront, or destroy the server by hand (``provisioner destroy``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable


def cmd_destroys(args: argparse.Namespace) -> int:
    from provisioner import db, holds
    from provisioner.cli import display
    from provisioner.cli.common import make_app

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        rows = holds.held(s)
    if args.json:
        print(json.dumps([{"server": srv.server_name or f"#{srv.id}", "subscription": h.subscription_id,
                           "customer": srv.user_email, "code": h.reason_code, "reason": h.reason,
                           "since": h.since.isoformat(), "approved_by": h.approved_by,
                           "approved_at": h.approved_at.isoformat() if h.approved_at else None} for h, srv in rows],
                         indent=2))
    elif not rows:
        print("no destroy is held")
    else:
        print(display.table(["SERVER", "SUBSCRIPTION", "CUSTOMER", "HELD", "SINCE (UTC)", "WHY"],
                            [[srv.server_name or f"#{srv.id}", h.subscription_id, srv.user_email,
                              h.reason_code + (" (approved)" if h.approved_at else ""), display.when(h.since),
                              h.reason] for h, srv in rows]))
    return 0


def cmd_destroys_approve(args: argparse.Namespace) -> int:
    from provisioner import db, holds
    from provisioner.cli.common import UsageError, make_app, named_server

    if bool(args.servers) == bool(args.all):
        raise UsageError("name the servers whose held destroy to approve, or pass --all (see `provisioner destroys`)")
    app = make_app(args)
    db.require_schema(app.engine)
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"
    with app.sessions() as s:
        servers = None if args.all else [named_server(app, s, ref) for ref in args.servers]
        try:
            approved = holds.approve(s, servers, actor=f"operator:{user}", now=app.clock())
        except holds.NotHeld as exc:
            raise UsageError(str(exc)) from None
        s.commit()
    names = ", ".join(srv.server_name or f"#{srv.id}" for srv in approved)
    print(f"approved: {len(approved)} destroy(s)" + (f" ({names}); the worker destroys them within seconds"
                                                     if approved else ""))
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    de = add("destroys", cmd_destroys, "destroys the planner holds, and why (lack of evidence, the circuit breaker)")
    de.add_argument("--json", action="store_true")
    desub = de.add_subparsers(dest="destroys_command", metavar="ACTION")
    ap = desub.add_parser("approve", help="let destroys held by the circuit breaker go (audited)",
                          description="let destroys held by the circuit breaker go (audited)")
    ap.add_argument("servers", nargs="*", metavar="SERVER", help="server names or #ids from `provisioner destroys`")
    ap.add_argument("--all", action="store_true", help="every destroy the breaker holds")
    ap.set_defaults(func=cmd_destroys_approve)
