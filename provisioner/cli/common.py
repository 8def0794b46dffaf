"""What every command shares: finding the config, building the wiring, naming a server."""

from __future__ import annotations

import argparse
import os
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


def make_app(args: argparse.Namespace):  # -> App, imported lazily to keep --help fast
    from provisioner.wiring import App

    return App(load_settings(config_path(args)))


def named_server(app: App, session: Session, ref: str) -> Server:
    server = app.find_server(session, ref)
    if server is None:
        raise UsageError(f"no server named {ref!r} (see `provisioner servers`)")
    return server


