"""Running the product's scripts on our servers over pinned SSH.

A server change is a run: files to upload to ``/root/provisioner/`` over SFTP (secrets never
travel on a command line), then one command, which is idempotent and prints
``provisioner-install: ok`` as its last line on success (the VPN layer's
:class:`~provisioner.vpn.remote.RemoteRun` has that shape; this adapter only needs the shape).
:meth:`SSHRemote.run` sends several runs over one connection, in order, and stops at the first
that fails; :meth:`SSHRemote.probe` only checks that the server answers SSH with its pinned key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from provisioner.cloud.ssh import SSHCommandFailed, SSHSession, SSHTarget, scrub

log = logging.getLogger(__name__)

REMOTE_DIR = "/root/provisioner"
OK_MARKER = "provisioner-install: ok"
PROBE_TIMEOUT = 30.0


class InstallFailed(SSHCommandFailed):
    """A script ran but did not report success (retried: every run is idempotent)."""

    transient = True


class RemoteCommand(Protocol):
    """Files to upload to ``REMOTE_DIR`` (name -> content), then one command to run as root."""

    @property
    def files(self) -> Mapping[str, bytes]: ...

    @property
    def command(self) -> str: ...

    def file_mode(self, name: str) -> int: ...


@dataclass(frozen=True)
class Host:
    ip: str
    port: int
    pinned_host_key: str


class Remote(Protocol):
    """What the lifecycle's steps ask of our servers over SSH (raises the SSH adapter's errors)."""

    def run(self, host: Host, runs: Sequence[RemoteCommand], *, after_boot: bool = False) -> None: ...

    def probe(self, host: Host) -> None: ...


class SSHRemote:
    def __init__(self, private_key_file: str, *, connect_timeout: float, command_timeout: float) -> None:
        self._key_path = Path(private_key_file)
        self._connect_timeout, self._command_timeout = connect_timeout, command_timeout

    def __repr__(self) -> str:
        return f"SSHRemote(key={self._key_path})"

    def _session(self, host: Host) -> SSHSession:
        target = SSHTarget(host=host.ip, port=host.port, pinned_host_key=host.pinned_host_key)
        return SSHSession(target, self._key_path.read_text(encoding="ascii"), connect_timeout=self._connect_timeout)

    def run(self, host: Host, runs: Sequence[RemoteCommand], *, after_boot: bool = False) -> None:
        """Upload and run each of ``runs`` in order; ``after_boot`` first waits for cloud-init."""
        with self._session(host) as ssh:
            if after_boot:
                ssh.run("cloud-init status --wait", timeout=self._command_timeout, check=False)
            for each in runs:
                if each.files:
                    ssh.put_many(REMOTE_DIR, {name: (data, each.file_mode(name)) for name, data in each.files.items()})
                result = ssh.run(each.command, timeout=self._command_timeout, check=False)
                lines = result.stdout.strip().splitlines()
                if result.exit_status != 0 or not lines or lines[-1].strip() != OK_MARKER:
                    raise InstallFailed(each.command, result.exit_status, scrub(result.stderr[-1000:]))
                log.info("ran %r on %s", each.command, host.ip)

    def probe(self, host: Host) -> None:
        """Connect with the pinned key and run ``true``: the server is up and it is ours."""
        with self._session(host) as ssh:
            ssh.run("true", timeout=PROBE_TIMEOUT)


def ssh_remote(private_key_file: str, *, connect_timeout: float, command_timeout: float) -> SSHRemote:
    return SSHRemote(private_key_file, connect_timeout=connect_timeout, command_timeout=command_timeout)
