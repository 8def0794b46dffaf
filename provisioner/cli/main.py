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
from provisioner.cli import display, operator
from provisioner.cli.common import (
    Command,
    UsageError,
    account_of,
    cli_owner,
    config_path,
    make_app,
    named_server,
    operator_actor,
)
from provisioner.settings import ConfigError

log = logging.getLogger("provisioner")

# --- commands ---------------------------------------------------------------------------------

def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from provisioner import db

    known = {s.revision for s in ScriptDirectory(str(db.MIGRATIONS)).walk_revisions()}
    if args.revision not in known:
        raise UsageError(f"no schema revision {args.revision!r}; known: {', '.join(sorted(known))}")
    app = make_app(args)
    try:
        db.downgrade(app.engine, args.revision)
    except CommandError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"database schema is at revision {db.current_revision(app.engine)} ({db.safe_url(str(app.engine.url))})")
    return 0


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
        if not storefront_error:
            from provisioner import holds

            with app.sessions() as s:
                holds.record_pass(s, result, app.clock(), app.settings, extra_holds=applied.held)
                s.commit()
        ids = [st.id for st in result.resume]
        ids += operations.due_rows(app.sessions, app.clock())
        if args.wait:
            from jobs.driver import drive_until_idle

            drive_until_idle(lc, timeout=args.wait)
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
    actor = operator_actor()
    with app.sessions() as s:
        if what == "create":
            sub = app.find_subscription(args.subscription)
            if sub is None:
                raise UsageError(f"subscription {args.subscription!r} is not in the storefront")
            if not sub.entitled(app.clock()):
                raise UsageError(f"subscription {sub.id} does not entitle a server (status {sub.status})")
            try:
                row = lc.begin_create(s, sub, actor=actor)
            except ServerBusy as exc:
                raise UsageError(str(exc)) from None
        else:
            row = named_server(app, s, args.server)
            try:
                if row.paused and what != "destroy":
                    raise ServerBusy(f"server {args.server} is paused; `provisioner resume {args.server}` first")
                if what == "rebuild":
                    lc.begin_rebuild(s, row, args.location, actor=actor)
                elif what == "retry":
                    lc.retry(s, row, actor=actor)
                else:
                    operator.start_destroy(app, s, row, args)
            except (ServerBusy, ValueError) as exc:
                raise UsageError(str(exc)) from None
        s.commit()
        rid = row.id
    if args.wait:
        from jobs.driver import drive_until_idle

        drive_until_idle(lc, [rid], timeout=args.wait)
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
    args.reason = (args.reason or "").strip()
    if args.force and not args.reason:
        raise UsageError("--force needs --reason '…' (the audit trail keeps why a paid server was taken down)")
    return _operator_action(args, "destroy")


def cmd_retry(args: argparse.Namespace) -> int:
    return operator.cmd_retry(args, lambda a: _operator_action(a, "retry"))


def cmd_ovpn(args: argparse.Namespace) -> int:
    from provisioner import db

    app = make_app(args)
    db.require_schema(app.engine)
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        if row.status == "Destroyed":
            raise UsageError(f"server {row.server_name or row.id} is Destroyed; it has no .ovpn")
        if not row.ovpn_file_enc:
            raise UsageError(f"server {row.server_name or row.id} has no .ovpn yet (status {row.status})")
        data = app.secret_box.open(row.ovpn_file_enc)
    if sys.stdout.isatty():
        raise UsageError("the .ovpn holds a private key; redirect it to a file: provisioner ovpn NAME > NAME.ovpn")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def cmd_root_password(args: argparse.Namespace) -> int:
    """Support reads a server's root password through the customer service: the view is recorded
    in the server's history (the customer sees "Root password viewed (by support)")."""
    from provisioner import customer, db

    app = make_app(args)
    db.require_schema(app.engine)
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"
    with app.sessions() as s:
        row = named_server(app, s, args.server)
        try:
            password = customer.reveal_root_password(s, app.settings, app.secret_box, row, actor=f"operator:{user}",
                                                     now=app.clock())
        except customer.Refused as exc:
            raise UsageError(f"server {row.server_name or row.id}: {exc.message}") from None
        s.commit()
        note = " (the customer chose key-only login: it does not log in over SSH)" if row.key_only else ""
    print(password)
    if note:
        print(f"provisioner: note: {note.strip(' ()')}", file=sys.stderr)
    return 0


def cmd_servers(args: argparse.Namespace) -> int:
    from sqlalchemy import func, or_, select

    from provisioner import db
    from provisioner.models import Server, Status

    app = make_app(args)
    q = select(Server).order_by(Server.id)
    if args.status:
        known = {st.value.lower(): st.value for st in Status}
        if args.status.lower() not in known:
            raise UsageError(f"--status: {args.status!r} is not a status; one of {', '.join(known.values())}")
        q = q.where(Server.status == known[args.status.lower()])
    if args.location:
        regions = {r for p in app.settings.products.values() for r in p.regions}
        if args.location.lower() not in regions:
            raise UsageError(f"--location: {args.location!r} is not a region of any product "
                             f"(offered: {', '.join(sorted(regions))})")
        q = q.where(Server.current_location == args.location.lower())
    if args.needs_human:
        q = q.where(Server.needs_human.is_(True), Server.status != Status.DESTROYED.value)
    db.require_schema(app.engine)
    with app.sessions() as s:
        if args.customer:
            who = args.customer.strip()
            mine = or_(func.lower(Server.user_email) == who.lower(), Server.customer_id == who)
            if s.scalar(select(func.count()).select_from(Server).where(mine)) == 0:
                raise UsageError(f"--customer: no server belongs to {who!r} (an e-mail address or a storefront "
                                 "customer id)")
            q = q.where(mine)
        rows = list(s.scalars(q))
    filtered = any((args.customer, args.status, args.location, args.needs_human))
    if args.json:
        print(json.dumps([display.server_json(r) for r in rows], indent=2))
    else:
        print(display.servers_table(rows) if rows or not filtered else "no servers match")
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
    import faulthandler

    for name in UNUSED_IN_WORKER:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from jobs.worker import Worker

    faulthandler.enable()     # a fatal signal (SIGBUS from a vanished database file) still says where
    worker = Worker(make_app(args))
    code = worker.run_forever()
    if worker.driver.busy:
        # A step still blocked after the grace (an install mid-command): its row's lease runs out
        # and the restarted worker resumes it.
        log.warning("exiting with %d step(s) still running; they resume on restart", worker.driver.busy)
    # Never wait for a thread at exit (concurrent.futures joins its pool threads, daemon or not,
    # so a step blocked on a host or a job blocked on a provider would hold the exit up).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_job(args: argparse.Namespace) -> int:
    from jobs import records, registry
    from provisioner import db, wiring

    app = make_app(args)
    db.require_schema(app.engine)
    owner = cli_owner()
    try:
        result = registry.run_and_record(app, args.name, registry.job(app, args.name, wiring.lifecycle(app, owner)))
    finally:
        records.heartbeat(app, owner, leader=False)   # how its provider calls went, for `status`
    print(registry.summary(args.name, result))
    return 0 if registry.succeeded(result) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from provisioner.cli.health import health

    app = make_app(args)
    report = health(app)       # a database that cannot be reached is one of its checks, not an error
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
    account = args.user_id if args.user_id is not None else account_of(app, args.email)
    token = mint_token(app.settings, args.email, user_id=account, ttl_seconds=args.ttl)
    print(f"{app.settings.api.public_url.rstrip('/')}/#token={token}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from provisioner.sandbox.app import main as sandbox_main

    argv = ["--config", config_path(args) or ""] if args.sandbox_command == "serve" else []
    return sandbox_main(argv)


def cmd_sandbox_mail(args: argparse.Namespace) -> int:
    """What the sandbox's mail catcher caught: the demo's customer mail and operator alerts."""
    import datetime as dt

    import httpx

    settings = make_app(args).settings
    if not settings.sandbox.enabled:
        raise UsageError(f"sandbox.enabled is false in {settings.source}: there is no mail catcher")
    url = f"http://127.0.0.1:{settings.sandbox.admin_port}/_sandbox/mail"
    try:
        mail = httpx.get(url, timeout=5).raise_for_status().json()["mail"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"provisioner: error: the sandbox does not answer at {url} ({type(exc).__name__}); is it running?",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(mail, indent=2))
    elif not mail:
        print("no mail caught yet")
    else:
        print(display.table(["WHEN (UTC)", "TO", "KIND", "SUBJECT"],
                            [[display.when(dt.datetime.fromtimestamp(m["at"], dt.UTC)), ", ".join(m["to"]),
                              m["kind"], m["subject"]] for m in mail]))
    return 0


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
    down = dbsub.add_parser("downgrade", help="roll the schema back to REVISION (stop the worker and API first)")
    down.add_argument("revision", help="a revision id such as 0004 (see provisioner/migrations/versions)")
    down.set_defaults(func=cmd_db_downgrade)

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
    de = add("destroy", cmd_destroy, "destroy a server: instance, DNS record, snapshot and secrets (refused while "
             "its subscription entitles it, unless --force)")
    de.add_argument("server", help="server name or #id")
    de.add_argument("--force", action="store_true", help="take down a server its subscription still entitles (abuse, "
                    "a chargeback): it stays down, its PKI kept, until `provisioner release`")
    de.add_argument("--reason", default="", help="why (required with --force; kept in the audit trail)")
    re_ = add("retry", cmd_retry, "resume a stuck action once its cause is fixed (clears 'needs a human'): one "
              "server, or every server needing a human")
    re_.add_argument("server", nargs="?", help="server name or #id")
    re_.add_argument("--all-needing-human", action="store_true", help="every server that needs a human (lists them "
                     "and asks you to confirm their number)")
    re_.add_argument("--since", metavar="TIME", help="with --all-needing-human: only those given up on since TIME "
                     "(2026-03-03T14:00Z, or a span ago like 2h)")
    re_.add_argument("--yes", action="store_true", help="with --all-needing-human: do not ask to confirm")
    held = operator.register(add)
    for sp in (cr, rb, de, re_, *held):
        sp.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                        help="keep driving until done, at most SECONDS (default: one pass)")
    ov = add("ovpn", cmd_ovpn, "write the customer's .ovpn to standard output")
    ov.add_argument("server", help="server name or #id")

    rp = add("root-password", cmd_root_password,
             "print a server's root password for support (recorded in the server's history, which its customer sees)")
    rp.add_argument("server", help="server name or #id")

    s = add("servers", cmd_servers, "list servers: name, customer, status, location, IP, schedule, bandwidth, and "
            "what needs you (needs a human, paused, held)")
    s.add_argument("--customer", metavar="EMAIL|ID", help="only this customer's (e-mail, or storefront customer id)")
    s.add_argument("--status", help="only servers in this status (Running, Error, …)")
    s.add_argument("--needs-human", action="store_true", help="only servers waiting for a human")
    s.add_argument("--location", metavar="REGION", help="only servers running in this region")
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
    tk.add_argument("--user-id", metavar="ACCOUNT", help="the storefront account the token names (WordPress user "
                    "id, or Stripe customer id); default: the account of EMAIL's servers")
    tk.add_argument("--ttl", type=int, default=900, help="seconds the link stays valid (at most 3600)")
    from provisioner.cli import destroys as cli_destroys
    from provisioner.cli import iphistory, keys
    from provisioner.cli import outbox as cli_outbox

    cli_outbox.register(add)
    cli_destroys.register(add)
    iphistory.register(add)
    keys.register(sub)
    st = add("status", cmd_status, "health of the automation; exits 1 when unhealthy (for monitoring)")
    st.add_argument("--json", action="store_true")
    sb = sub.add_parser("sandbox", help="the local simulators (test and demo only)",
                        description="the local simulators of Vultr, Cloudflare and SSH hosts (test and demo only)")
    sbsub = sb.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    sbsub.add_parser("serve", help="run the sandbox until Ctrl-C, as the config describes").set_defaults(
        func=cmd_sandbox)
    sm = sbsub.add_parser("mail", help="the mail the sandbox's catcher received (demo mail and operator alerts)")
    sm.add_argument("--json", action="store_true")
    sm.set_defaults(func=cmd_sandbox_mail)
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
        code = func(args)
        sys.stdout.flush()       # a reader that went away is met here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `provisioner status | head`: the reader closed the pipe; end quietly, as a SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
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
