"""What every command shares: finding the config, building the wiring, naming a server."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.settings import ConfigError, load_settings

if TYPE_CHECKING:  # imported lazily at run time to keep --help fast
    from sqlalchemy.orm import Session

    from provisioner.models import Server
    from provisioner.wiring import App

DEFAULT_CONFIGS = (Path("/etc/provisioner/provisioner.toml"), Path("config/sandbox.toml"))

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def config_path(args: argparse.Namespace) -> str | None:
    if args.config:
        return str(args.config)
    if os.environ.get("PROVISIONER_CONFIG"):
        return os.environ["PROVISIONER_CONFIG"]
    for candidate in DEFAULT_CONFIGS:
        if candidate.exists():
            return str(candidate)
    raise ConfigError("no configuration: pass --config FILE or set PROVISIONER_CONFIG "
                      "(config/provisioner.example.toml documents every key)")


def cli_owner() -> str:
    """This command's own lease owner: two operator commands never work one row at once."""
    import socket

    return f"cli:{socket.gethostname()}:{os.getpid()}"


def operator_actor() -> str:
    """Who an operator command acts as, in the audit trail."""
    return "operator:" + (os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator")


_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(option: str, text: str, now: dt.datetime) -> dt.datetime:
    """A moment an operator typed: ISO 8601 (``2026-03-03T14:02Z``, ``2026-03-03 14:02``,
    ``2026-03-03T15:02+01:00``, a bare date), UTC unless it names an offset; or a span ago
    (``90m``, ``2h``, ``3d``). Anything else is a usage error naming the option."""
    ago = _AGO.fullmatch(text.strip().lower())
    if ago:
        return now - dt.timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a time; write it as 2026-03-03T14:02Z (ISO 8601, UTC unless "
                         "it names an offset) or as a span ago like 2h") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def make_app(args: argparse.Namespace):  # -> App, imported lazily to keep --help fast
    from provisioner.wiring import App

    return App(load_settings(config_path(args)))


def named_server(app: App, session: Session, ref: str) -> Server:
    server = app.find_server(session, ref)
    if server is None:
        raise UsageError(f"no server named {ref!r} (see `provisioner servers`)")
    return server




def account_of(app: App, email: str) -> str:
    """The storefront account of ``email``'s servers (what a dashboard token must name)."""
    from sqlalchemy import func, select

    from provisioner import db
    from provisioner.models import Server

    db.require_schema(app.engine)
    with app.sessions() as s:
        # the servers the dashboard shows: live ones, and those support took down until released
        shown = (Server.status != "Destroyed") | Server.operator_hold_at.is_not(None)
        accounts = set(s.scalars(select(Server.account_id).where(func.lower(Server.user_email) == email.lower(),
                                                                  shown)))
    known = sorted(a for a in accounts if a)
    if not known and accounts:
        raise UsageError(f"{email}'s servers belong to no storefront account (a guest checkout): the customer "
                         "sees them once they have an account")
    if not known:
        raise UsageError(f"no server belongs to {email}; give the account with --user-id")
    if len(known) > 1:
        raise UsageError(f"{email} has servers on several accounts ({', '.join(known)}); pick one with --user-id")
    return known[0]
