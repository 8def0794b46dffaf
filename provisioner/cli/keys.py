"""``provisioner secrets rotate``: re-seal every stored secret under the first Fernet key
(see :mod:`provisioner.rotation`). Prints table, column and counts, never a token or a key."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from provisioner.cli.common import UsageError, make_app


def cmd_rotate(args: argparse.Namespace) -> int:
    from provisioner import db, rotation

    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    app = make_app(args)
    box = app.secret_box
    if box.key_count < 2:
        raise UsageError("secrets.fernet_keys holds one key, so there is nothing to rotate from: put a new key "
                         "(`provisioner keygen`) first and keep the old one after it, restart the worker and the API, "
                         "then run this again")
    db.require_schema(app.engine)

    def progress(name: str, r: rotation.ColumnReport) -> None:
        if r.resealed and r.resealed % (args.batch * 10) == 0:
            print(f"  {name}: {r.resealed} re-sealed so far", flush=True)

    report = rotation.rotate(app.sessions, box, batch=args.batch, progress=progress)
    for name, r in report.columns.items():
        line = f"{name}: {r.resealed} re-sealed; {r.current} under the first key"
        if r.unreadable:
            line += f"; {len(r.unreadable)} open with no configured key (rows {', '.join(map(str, r.unreadable[:10]))})"
        if r.stale:
            line += f"; {r.stale} written meanwhile under an older key"
        print(line)
    if any(r.stale for r in report.columns.values()):
        print("provisioner: error: a running process still seals with an older key: restart the worker and the API "
              "with the new key first, then run `provisioner secrets rotate` again (it resumes)", file=sys.stderr)
        return 1
    if not report.done:
        print("provisioner: error: some stored secrets open with none of the configured keys (see above); keep "
              "every key until they are dealt with", file=sys.stderr)
        return 1
    print("done: every stored secret opens with the first key alone; remove the old key(s) from "
          "secrets.fernet_keys and restart the worker and the API")
    return 0


def register(commands: Any) -> None:
    """``commands``: the top-level ``add_subparsers()`` object."""
    sp = commands.add_parser("secrets", help="stored secrets: key rotation", description="stored secrets: key rotation")
    sub = sp.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    rt = sub.add_parser("rotate", help="re-seal every stored secret under the first key of secrets.fernet_keys "
                        "(resumable; safe while the worker runs)",
                        description="re-seal every stored secret under the first key of secrets.fernet_keys "
                        "(resumable; safe while the worker runs)")
    rt.add_argument("--batch", type=int, default=200, help="rows per commit (default 200)")
    rt.set_defaults(func=cmd_rotate)
