"""Installing OpenVPN on a fresh server over pinned SSH.

The worker uploads the server's PKI, ``server.conf`` and the install script to
``/root/provisioner/`` over SFTP (secrets never travel on a command line), then runs the
script, which is idempotent and prints ``provisioner-install: ok`` as its last line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from provisioner.cloud.ssh import SSHCommandFailed, SSHSession, SSHTarget, scrub

log = logging.getLogger(__name__)

# (ip, port, pinned host key, files to upload) -> None; raises SSHError (InstallFailed when the
# script ran but did not report success)
Installer = Callable[[str, int, str, dict[str, bytes]], None]

REMOTE_DIR = "/root/provisioner"
OK_MARKER = "provisioner-install: ok"


class InstallFailed(SSHCommandFailed):
    """The install script ran but did not report success (retried: the script is idempotent)."""

    transient = True


def ssh_installer(private_key_file: str, *, connect_timeout: float, command_timeout: float) -> Installer:
    key_path = Path(private_key_file)

    def install(ip: str, port: int, pinned_host_key: str, files: dict[str, bytes]) -> None:
        client_key = key_path.read_text(encoding="ascii")
        target = SSHTarget(host=ip, port=port, pinned_host_key=pinned_host_key)
        with SSHSession(target, client_key, connect_timeout=connect_timeout) as ssh:
            ssh.run("cloud-init status --wait", timeout=command_timeout, check=False)
            for name, data in sorted(files.items()):
                ssh.put(data, f"{REMOTE_DIR}/{name}", 0o700 if name.endswith(".sh") else 0o600)
            result = ssh.run(f"bash {REMOTE_DIR}/install.sh", timeout=command_timeout, check=False)
            lines = result.stdout.strip().splitlines()
            if result.exit_status != 0 or not lines or lines[-1].strip() != OK_MARKER:
                raise InstallFailed("install.sh", result.exit_status, scrub(result.stderr[-1000:]))
            log.info("installed OpenVPN on %s", ip)

    return install
