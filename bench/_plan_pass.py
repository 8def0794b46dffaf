"""Helper of bench/reconcile.py (not a benchmark itself): planning passes in a process of their own.

    python bench/_plan_pass.py --tree DIR --settings FILE [--passes 1] [--worker]

Imports ``provisioner`` and ``jobs`` from the source tree ``DIR`` (this checkout, or another
commit's tree for a before/after in the same run), makes the ``App`` from the settings file and
runs one warm-up pass, then ``--passes`` timed ones, each exactly as the code of that tree runs
it: ``App.plan_once()``, or with ``--worker`` ``App.plan_once(on_read=...)`` with the worker's own
``jobs.server_check.keep_standing``, as ``server_check`` calls it every tick. Prints one JSON
object: wall and CPU seconds of each timed pass, the process's peak RSS (``VmHWM``, which
includes the warm-up pass and the interpreter with its modules) and its RSS before the first
pass, and what the last pass decided.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not ``ru_maxrss``: Linux carries that across fork and exec,
    so a child of the (large) benchmark process would report its parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    if not (argv if argv is not None else sys.argv[1:]):
        print("bench/_plan_pass.py: a helper of bench/reconcile.py; run that")
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", required=True)
    parser.add_argument("--settings", required=True)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(args.tree).resolve()))
    from provisioner.settings import load_settings
    from provisioner.wiring import App

    app = App(load_settings(Path(args.settings), env={}))
    keep_standing: Any = None
    if args.worker:
        from jobs.server_check import keep_standing

    def one() -> str:
        now = app.clock()
        if args.worker:
            result, error = app.plan_once(on_read=lambda subs: keep_standing(app, subs, now))
        else:
            result, error = app.plan_once()    # an older tree's plan_once takes nothing
        if error:
            raise RuntimeError(f"the storefront could not be read: {error}")
        return (f"build {len(result.build)}, destroy {len(result.destroy)}, rebuild {len(result.rebuild)}, "
                f"held {len(result.held)}, seen ended {len(result.seen_ended)}, contacts {len(result.contacts)}")

    before = _rss_mb()
    one()
    wall, cpu = [], []
    decided = ""
    for _ in range(max(1, args.passes)):
        t0, c0 = time.perf_counter(), time.process_time()
        decided = one()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = _peak_rss_mb()
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss_mb": peak, "rss_before_mb": before, "decided": decided}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
