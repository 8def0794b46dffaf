"""The ``provisioner`` command line.

Exit codes: 0 ok; 2 usage or configuration error; 1 runtime error. Errors are one line on
stderr without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from provisioner import __version__, display
from provisioner.settings import ConfigError, load_settings

log = logging.getLogger("provisioner")

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


def make_app(args: argparse.Namespace):  # -> App, imported lazily to keep --help fast
    from provisioner.app import App

    return App(load_settings(config_path(args)))


# --- commands ---------------------------------------------------------------------------------

def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from provisioner import db

    app = make_app(args)
    db.upgrade(app.engine)
    print(f"database schema is at revision {db.current_revision(app.engine)} ({db.safe_url(str(app.engine.url))})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from provisioner import db

    app = make_app(args)
    db.require_schema(app.engine)
    result, storefront_error = app.plan_once()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(display.plan_text(result))
    if storefront_error:
        print(f"provisioner: error: {storefront_error}", file=sys.stderr)
        return 1
    return 0


def cmd_servers(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from provisioner import db
    from provisioner.models import Server

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        rows = list(s.scalars(select(Server).order_by(Server.id)))
    if args.json:
        print(json.dumps([display.server_json(r) for r in rows], indent=2))
    else:
        print(display.servers_table(rows))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from provisioner import db

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        server = app.find_server(s, args.server)
        if server is None:
            raise UsageError(f"no server named {args.server!r} (see `provisioner servers`)")
        events = app.events(s, server.id, limit=args.limit)
    if args.json:
        print(json.dumps([display.event_json(e) for e in events], indent=2))
    else:
        print(display.events_table(events))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from provisioner.secrets import generate_key

    print(generate_key())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from provisioner.demo import run_demo

    return run_demo(args)


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="provisioner", description=(
        "Turns storefront subscriptions into OpenVPN servers on Vultr with Cloudflare DNS names."))
    p.add_argument("--config", metavar="FILE", help="settings file (default: $PROVISIONER_CONFIG, "
                   "/etc/provisioner/provisioner.toml, then ./config/sandbox.toml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--version", action="version", version=f"provisioner {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    dbp = sub.add_parser("db", help="database schema", description="database schema")
    dbsub = dbp.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbsub.add_parser("upgrade", help="create or migrate the schema to the latest revision")
    up.set_defaults(func=cmd_db_upgrade)

    c = add("check", cmd_check, "one planning pass: read the storefront, compare with the servers, print the plan")
    c.add_argument("--json", action="store_true", help="print the plan as JSON")

    s = add("servers", cmd_servers, "list servers: name, customer, status, location, IP, schedule, bandwidth")
    s.add_argument("--json", action="store_true")

    e = add("events", cmd_events, "the audit trail of one server")
    e.add_argument("server", help="server name (g0001 or g0001.<domain>) or #id")
    e.add_argument("--limit", type=int, default=200)
    e.add_argument("--json", action="store_true")

    add("keygen", cmd_keygen, "print a new Fernet key for secrets.fernet_keys")
    add("demo", cmd_demo, "the embedded default: sandbox clouds, SQLite and a demo storefront")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_guarded(args.func, args, parser)


def run_guarded(func: Command, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from provisioner.errors import RUNTIME_ERRORS

    try:
        return func(args)
    except (ConfigError, UsageError) as exc:
        if args.debug:
            raise
        print(f"provisioner: error: {exc}", file=sys.stderr)
        return 2
    except RUNTIME_ERRORS as exc:
        if args.debug:
            raise
        print(f"provisioner: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"provisioner: internal error: {type(exc).__name__}: {first} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
