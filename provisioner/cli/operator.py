"""The operator's holds and bulk recovery: ``pause`` / ``resume``, ``destroy --force`` /
``release``, ``retry --all-needing-human``.

Every change is one commit with its audit event (actor ``operator:<user>``); a command that
refuses changes nothing. Commands that then carry a row forward claim it as this process's
own lease owner (:func:`provisioner.cli.common.cli_owner`), so two operator commands, or a
command and a worker, never work one row at once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from provisioner.cli.common import (
    UsageError,
    cli_owner,
    make_app,
    named_server,
    operator_actor,
    parse_time,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from provisioner.models import Server
    from provisioner.wiring import App


# --- pause / resume -----------------------------------------------------------------------------

def cmd_pause(args: argparse.Namespace) -> int:
    from provisioner import actions, db
    from provisioner.cli import display

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        _refusing(lambda: actions.pause(s, row, actor=operator_actor(), reason=args.reason or "",
                                        now=app.clock()))
        s.commit()
        print(display.servers_table([row]))
    print("paused: the worker does not touch it and the customer sees \"paused by support\"; "
          f"`provisioner resume {args.server}` lets it go on")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from provisioner import actions, db, operations, wiring

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        _refusing(lambda: actions.resume_paused(s, app.settings, row, actor=operator_actor(), now=app.clock()))
        s.commit()
        rid, busy = row.id, bool(row.action)
    if busy:  # carry on with the action it was in, as this process's own lease owner
        operations.drive(wiring.lifecycle(app, owner=cli_owner()), [rid])
    return _show(app, rid)


# --- destroy --force / release -----------------------------------------------------------------

def start_destroy(app: App, s: Session, row: Server, args: argparse.Namespace) -> None:
    """``provisioner destroy``: refused for a server its subscription still entitles, unless
    ``--force`` with a reason (then held until ``provisioner release``)."""
    from provisioner import actions
    from provisioner.subscriptions import StorefrontUnavailable

    name = row.server_name or f"#{row.id}"
    if row.paused and not args.force:
        raise UsageError(f"server {name} is paused; `provisioner resume {name}` first (or --force --reason '…')")
    if args.force:
        _refusing(lambda: actions.begin_forced_destroy(s, app.settings, row, actor=operator_actor(),
                                                       reason=args.reason, now=app.clock()))
        return
    if row.status != "Destroyed":
        try:
            sub = app.find_subscription(row.subscription_id)
        except StorefrontUnavailable as exc:
            raise StorefrontUnavailable(f"{exc}; cannot tell whether subscription {row.subscription_id} still "
                                        f"entitles {name}. To take it down anyway: provisioner destroy {name} "
                                        "--force --reason '…'") from None
        if sub is not None and sub.entitled(app.clock()):
            until = f" until {sub.entitled_until:%Y-%m-%d}" if sub.entitled_until else ""
            raise UsageError(f"server {name}: subscription {sub.id} still entitles it ({sub.status}{until}), so the "
                             f"planner would build it again; to take it down anyway (abuse, a chargeback): "
                             f"provisioner destroy {name} --force --reason '…' (down until `provisioner release`)")
    reason = f"requested by an operator: {args.reason}" if args.reason else "requested by an operator"
    actions.begin_destroy(s, app.settings, row, actor=operator_actor(), reason=reason, now=app.clock())


def cmd_release(args: argparse.Namespace) -> int:
    from provisioner import actions, db, operations, wiring

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        if not row.on_hold:  # refuse before reading the storefront
            raise UsageError(f"server {args.server} is not held by an operator")
        sub = app.find_subscription(row.subscription_id)
        built = _refusing(lambda: actions.release(s, app.settings, row, sub, actor=operator_actor(),
                                                  now=app.clock()))
        s.commit()
        rid = row.id
    if built:
        lc = wiring.lifecycle(app, owner=cli_owner())
        if args.wait:
            from jobs.driver import drive_until_idle

            drive_until_idle(lc, [rid], timeout=args.wait)
        else:
            operations.drive(lc, [rid])
    return _show(app, rid)


# --- retry --all-needing-human -----------------------------------------------------------------

def cmd_retry(args: argparse.Namespace, one: Callable[[argparse.Namespace], int]) -> int:
    if bool(args.server) == bool(args.all_needing_human):
        raise UsageError("name one server to retry, or pass --all-needing-human (see `provisioner servers "
                         "--needs-human`)")
    if args.since and not args.all_needing_human:
        raise UsageError("--since goes with --all-needing-human")
    if args.server:
        return one(args)
    return _retry_all(args)


def _retry_all(args: argparse.Namespace) -> int:
    from provisioner import actions, db, operations, wiring
    from provisioner.cli import display

    app = make_app(args)
    db.require_schema(app.engine)
    now = app.clock()
    since = parse_time("--since", args.since, now) if args.since else None
    with app.sessions() as s:
        stuck = needing_human(s, since)
        if not stuck:
            when = f" since {display.when(since)} UTC" if since else ""
            raise UsageError(f"no server needs a human{when}; nothing retried")
        print(display.servers_table([row for row, _ in stuck]))
        _confirm(len(stuck), args.yes)
        actor, ids = operator_actor(), []
        note = f"one of {len(stuck)} retried at once (--all-needing-human" + (
            f" --since {display.when(since)} UTC)" if since else ")")
        for row, _ in stuck:
            actions.retry(s, app.settings, row, actor=actor, now=now, note=note)
            ids.append(row.id)
        s.commit()  # one commit: all of them, or none
    print(f"retrying {len(ids)} server(s) at the step where each stopped")
    lc = wiring.lifecycle(app, owner=cli_owner())
    if args.wait:
        from jobs.driver import drive_until_idle

        drive_until_idle(lc, ids, timeout=args.wait)
    else:
        operations.drive(lc, ids)
    with app.sessions() as s:
        from provisioner.models import Server

        print(display.servers_table([r for r in (s.get(Server, i) for i in ids) if r is not None]))
    return 0


def needing_human(s: Session, since: dt.datetime | None) -> list[tuple[Server, dt.datetime | None]]:
    """Rows waiting for a human, with when each was given up on (its newest "needs a human"
    event); with ``since``, only those given up on at or after it."""
    from sqlalchemy import func, select

    from provisioner.models import Server, ServerEvent, as_utc

    rows = list(s.scalars(select(Server).where(Server.needs_human.is_(True), Server.action.is_not(None))
                          .order_by(Server.id)))
    if not rows:
        return []
    given_up = dict(s.execute(
        select(ServerEvent.server_id, func.max(ServerEvent.at))
        .where(ServerEvent.server_id.in_([r.id for r in rows]), ServerEvent.outcome == "failed",
               ServerEvent.detail.like("needs a human:%"))
        .group_by(ServerEvent.server_id)).tuples().all())
    out = [(r, as_utc(given_up.get(r.id))) for r in rows]
    if since is not None:
        out = [(r, at) for r, at in out if at is not None and at >= since]
    return out


def _confirm(count: int, yes: bool) -> None:
    if yes:
        return
    print(f"Retry these {count} server(s)? Type {count} to confirm: ", end="", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != str(count):
        raise UsageError(f"not confirmed (expected {count}, got {answer!r}); nothing retried")


# --- shared -------------------------------------------------------------------------------------

def _refusing(start: Callable[[], object]) -> object:
    """Run a domain rule; its refusal (busy, not held, …) is a one-line usage error."""
    from provisioner.actions import NotOffered, ServerBusy

    try:
        return start()
    except (ServerBusy, NotOffered) as exc:
        raise UsageError(str(exc)) from None


def _show(app: App, rid: int) -> int:
    from provisioner.cli import display
    from provisioner.models import Server

    with app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        print(display.servers_table([row]))
        if row.last_error:
            print(f"last error: {row.last_error}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> Sequence[argparse.ArgumentParser]:
    """The hold commands; returns the parsers that take ``--wait``."""
    pa = add("pause", cmd_pause, "hold a server while you look: the worker leaves it alone, it keeps running; "
             "the customer sees \"paused by support\" (audited)")
    pa.add_argument("server", help="server name or #id")
    pa.add_argument("--reason", default="", help="why, for the audit trail")
    re_ = add("resume", cmd_resume, "end a pause: the worker carries on with the server (audited)")
    re_.add_argument("server", help="server name or #id")
    rl = add("release", cmd_release, "end an operator's hold after `destroy --force`: an entitled subscription's "
             "server is built again with the same PKI, so its .ovpn keeps working (audited)")
    rl.add_argument("server", help="server name or #id")
    return (rl,)
