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
from collections.abc import Sequence

from provisioner import __version__
from provisioner.cli import display
from provisioner.cli.common import Command, UsageError, cli_owner, config_path, make_app, named_server
from provisioner.settings import ConfigError

log = logging.getLogger("provisioner")

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
    if args.apply:
        from provisioner import operations, wiring

        lc = wiring.lifecycle(app, owner=cli_owner())
        applied = operations.start_plan(lc, result, app.destroy_cross_check())
        ids = [st.id for st in result.resume]
        ids += operations.due_rows(app.sessions, app.clock())
        if args.wait:
            operations.drive_until_idle(lc, timeout=args.wait)
        else:
            operations.drive(lc, ids)
        for line in applied.refused:
            print(f"refused: {line}")
        print(display.servers_table(app.all_servers()))
    if storefront_error:
        print(f"provisioner: error: {storefront_error}", file=sys.stderr)
        return 1
    return 0


def _operator_action(args: argparse.Namespace, what: str) -> int:
    from provisioner import db, operations, wiring
    from provisioner.lifecycle import ServerBusy

    app = make_app(args)
    db.require_schema(app.engine)
    lc = wiring.lifecycle(app, owner=cli_owner())
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"
    with app.sessions() as s:
        if what == "create":
            sub = app.find_subscription(args.subscription)
            if sub is None:
                raise UsageError(f"subscription {args.subscription!r} is not in the storefront")
            if not sub.entitled(app.clock()):
                raise UsageError(f"subscription {sub.id} does not entitle a server (status {sub.status})")
            try:
                row = lc.begin_create(s, sub, actor=f"operator:{user}")
            except ServerBusy as exc:
                raise UsageError(str(exc)) from None
        else:
            row = named_server(app, s, args.server)
            try:
                if what == "rebuild":
                    lc.begin_rebuild(s, row, args.location, actor=f"operator:{user}")
                elif what == "retry":
                    lc.retry(s, row, actor=f"operator:{user}")
                else:
                    lc.begin_destroy(s, row, actor=f"operator:{user}", reason="requested by an operator")
            except (ServerBusy, ValueError) as exc:
                raise UsageError(str(exc)) from None
        s.commit()
        rid = row.id
    if args.wait:
        operations.drive_until_idle(lc, [rid], timeout=args.wait)
    else:
        operations.drive(lc, [rid])
    with app.sessions() as s:
        from provisioner.models import Server

        final = s.get(Server, rid)
        assert final is not None
        print(display.servers_table([final]))
        if final.last_error:
            print(f"last error: {final.last_error}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    return _operator_action(args, "create")


def cmd_rebuild(args: argparse.Namespace) -> int:
    return _operator_action(args, "rebuild")


def cmd_destroy(args: argparse.Namespace) -> int:
    return _operator_action(args, "destroy")


def cmd_retry(args: argparse.Namespace) -> int:
    return _operator_action(args, "retry")


def cmd_ovpn(args: argparse.Namespace) -> int:
    from provisioner import db

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        if not row.ovpn_file_enc:
            raise UsageError(f"server {row.server_name or row.id} has no .ovpn yet (status {row.status})")
        data = app.secret_box.open(row.ovpn_file_enc)
    if sys.stdout.isatty():
        raise UsageError("the .ovpn holds a private key; redirect it to a file: provisioner ovpn NAME > NAME.ovpn")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
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
        server = named_server(app, s, args.server)
        events = app.events(s, server.id, limit=args.limit)
    if args.json:
        print(json.dumps([display.event_json(e) for e in events], indent=2))
    else:
        print(display.events_table(events))
    return 0


# Optional parts of libraries that the worker never uses, each resident for the daemon's life
# once imported (together ~20 MB): httpx's command line (click, rich, pygments), imported by
# httpx whenever those happen to be installed; and invoke (with its vendored yaml and
# unittest), imported by paramiko's ssh_config support for ``Match exec``. Both importers fall
# back cleanly when the import fails, which a None in sys.modules makes it do.
UNUSED_IN_WORKER = ("httpx._main", "invoke")


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    for name in UNUSED_IN_WORKER:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from jobs.worker import Worker

    code = Worker(make_app(args)).run_forever()
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        # A step still blocked after the grace (an install mid-command): its row's lease runs out
        # and the restarted worker resumes it. Do not let the interpreter wait for it at exit.
        log.warning("exiting with %d step(s) still running (%s); they resume on restart", len(stuck),
                    ", ".join(sorted(stuck)[:5]))
        logging.shutdown()
        os._exit(code)
    return code


def cmd_job(args: argparse.Namespace) -> int:
    from jobs import registry
    from provisioner import db, wiring

    app = make_app(args)
    db.require_schema(app.engine)
    result = registry.job(app, args.name, wiring.lifecycle(app, owner=cli_owner()))()
    print(registry.summary(args.name, result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from provisioner import db
    from provisioner.cli.health import health

    app = make_app(args)
    db.require_schema(app.engine)
    report = health(app)
    print(json.dumps(report, indent=2, default=str) if args.json else display.health_text(report))
    return 0 if report["healthy"] else 1


def cmd_api(args: argparse.Namespace) -> int:
    from dashboard_api.server import serve

    return serve(make_app(args).settings)


def cmd_token(args: argparse.Namespace) -> int:
    from dashboard_api.tokens import mint_token

    if not 1 <= args.ttl <= 3600:
        raise UsageError("--ttl must be between 1 and 3600 seconds (dashboard tokens live at most an hour)")
    app = make_app(args)
    token = mint_token(app.settings, args.email, user_id=args.user_id, ttl_seconds=args.ttl)
    print(f"{app.settings.api.public_url.rstrip('/')}/#token={token}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from provisioner.sandbox.app import main as sandbox_main

    argv = ["--config", config_path(args) or ""] if args.sandbox_command == "serve" else []
    return sandbox_main(argv)


def cmd_keygen(args: argparse.Namespace) -> int:
    from provisioner.secrets import generate_key

    print(generate_key())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from provisioner.cli.demo import run_demo

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
    c.add_argument("--apply", action="store_true", help="carry the plan out (one pass)")
    c.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                   help="with --apply: keep driving until every server is settled, at most SECONDS")

    cr = add("create", cmd_create, "build the server for one subscription now")
    cr.add_argument("subscription", help="storefront subscription id")
    rb = add("rebuild", cmd_rebuild, "rebuild a server (create-before-destroy; the .ovpn keeps working)")
    rb.add_argument("server", help="server name (g0001 or g0001.<domain>) or #id")
    rb.add_argument("--location", default="random", help="region id, or 'random' (default)")
    de = add("destroy", cmd_destroy, "destroy a server: instance, DNS record, snapshot and secrets")
    de.add_argument("server", help="server name or #id")
    re_ = add("retry", cmd_retry, "resume a server's stuck action once its cause is fixed (clears 'needs a human')")
    re_.add_argument("server", help="server name or #id")
    for sp in (cr, rb, de, re_):
        sp.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                        help="keep driving until done, at most SECONDS (default: one pass)")
    ov = add("ovpn", cmd_ovpn, "write the customer's .ovpn to standard output")
    ov.add_argument("server", help="server name or #id")

    s = add("servers", cmd_servers, "list servers: name, customer, status, location, IP, schedule, bandwidth")
    s.add_argument("--json", action="store_true")

    e = add("events", cmd_events, "the audit trail of one server")
    e.add_argument("server", help="server name (g0001 or g0001.<domain>) or #id")
    e.add_argument("--limit", type=int, default=200)
    e.add_argument("--json", action="store_true")

    add("run", cmd_run, "the worker daemon: reconcile every tick, schedules, bandwidth, sweeper (systemd)")
    from jobs.catalog import NAMES

    jb = add("job", cmd_job, "run one job once (for cron): " + ", ".join(NAMES))
    jb.add_argument("name", choices=NAMES)
    add("api", cmd_api, "the customer dashboard: JSON API and page (uvicorn; systemd)")
    tk = add("token", cmd_token, "print a dashboard login URL for a customer (support and testing)")
    tk.add_argument("email")
    tk.add_argument("--user-id", type=int, default=0, help="WordPress user id (default 0)")
    tk.add_argument("--ttl", type=int, default=900, help="seconds the link stays valid (at most 3600)")
    from provisioner.cli import outbox as cli_outbox

    cli_outbox.register(add)
    st = add("status", cmd_status, "health of the automation; exits 1 when unhealthy (for monitoring)")
    st.add_argument("--json", action="store_true")
    sb = sub.add_parser("sandbox", help="the local simulators (test and demo only)",
                        description="the local simulators of Vultr, Cloudflare and SSH hosts (test and demo only)")
    sbsub = sb.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    sbsub.add_parser("serve", help="run the sandbox until Ctrl-C, as the config describes").set_defaults(
        func=cmd_sandbox)
    add("keygen", cmd_keygen, "print a new Fernet key for secrets.fernet_keys")
    dm = add("demo", cmd_demo, "the embedded default: sandbox clouds, SQLite, a demo storefront, worker and API")
    dm.add_argument("--plan-only", action="store_true", help="prepare the demo database and print the plan, then exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_guarded(args.func, args, parser)


def run_guarded(func: Command, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from provisioner.db import DatabaseUnavailable
    from provisioner.secrets import SecretKeyError, UndecryptableSecret
    from provisioner.subscriptions import StorefrontUnavailable

    # Runtime errors are reported as one line (exit 1), not as an internal error.
    runtime_errors = (DatabaseUnavailable, StorefrontUnavailable, SecretKeyError, UndecryptableSecret)
    try:
        return func(args)
    except (ConfigError, UsageError) as exc:
        if args.debug:
            raise
        print(f"provisioner: error: {exc}", file=sys.stderr)
        return 2
    except runtime_errors as exc:
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
