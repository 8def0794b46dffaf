"""``provisioner outbox``: what the notifications outbox holds, and retrying what failed.

A message that used up ``notify.max_attempts`` (SMTP down for hours, a wrong password) or
was refused outright stays ``failed``; after fixing the cause the operator queues it
again with ``provisioner outbox retry``. Sent messages are never sent again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

STATUSES = ("pending", "sending", "sent", "failed")   # provisioner.models' outbox states, by name


def cmd_outbox(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from provisioner import db
    from provisioner.cli import display
    from provisioner.cli.common import make_app
    from provisioner.models import OutboxMessage

    app = make_app(args)
    db.require_schema(app.engine)
    query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(args.limit)
    if args.status:
        query = query.where(OutboxMessage.status == args.status)
    with app.sessions() as s:
        rows = list(s.scalars(query))
    print(json.dumps([display.outbox_json(m) for m in rows], indent=2) if args.json else display.outbox_table(rows))
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from provisioner import db
    from provisioner.cli.common import UsageError, make_app
    from provisioner.notify.outbox import requeue_failed

    if bool(args.ids) == bool(args.all_failed):
        raise UsageError("name the message ids to retry, or pass --all-failed (see `provisioner outbox`)")
    app = make_app(args)
    db.require_schema(app.engine)
    try:
        chosen = requeue_failed(app.sessions, app.clock(), None if args.all_failed else args.ids)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"queued again: {len(chosen)} message(s)" + (f" ({', '.join(f'#{i}' for i in chosen)})" if chosen else "")
          + "; the worker sends them within a minute, or run `provisioner job send_outbox`")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    ob = add("outbox", cmd_outbox, "notifications queued, sent and failed (newest first)")
    ob.add_argument("--status", choices=STATUSES, help="only messages in this state")
    ob.add_argument("--limit", type=int, default=50)
    ob.add_argument("--json", action="store_true")
    obsub = ob.add_subparsers(dest="outbox_command", metavar="ACTION")
    rt = obsub.add_parser("retry", help="queue failed messages again (after fixing SMTP or the webhook)",
                          description="queue failed messages again (after fixing SMTP or the webhook)")
    rt.add_argument("ids", nargs="*", type=int, metavar="ID", help="message ids from `provisioner outbox`")
    rt.add_argument("--all-failed", action="store_true", help="every failed message")
    rt.set_defaults(func=cmd_outbox_retry)
