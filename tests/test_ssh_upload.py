"""Many files in one command (``SSHSession.put_many``): the command itself run by this machine's
real sh, tar and mv, then the whole path over real SSH to a simulated host."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from provisioner.cloud.ssh import UPLOAD_OK, SSHTransferFailed, upload_archive, upload_command
from tests.fixtures.hosts import RunningHost

pytestmark = pytest.mark.timeout(30)

FILES = {"install.sh": (b"#!/bin/bash\necho hi\n", 0o700), "server.key": (b"-----BEGIN PRIVATE KEY-----\nx\n", 0o600),
         "ca.crt": (os.urandom(5000), 0o600)}


def _run_here(directory: Path, files: dict[str, tuple[bytes, int]], names: list[str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
    """What the host's shell does with the command and the archive on its standard input."""
    argv = shlex.split(upload_command(str(directory), names if names is not None else sorted(files)))
    return subprocess.run(argv, input=upload_archive(files), capture_output=True, timeout=20)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_command_writes_each_file_with_its_mode_into_a_private_directory(tmp_path: Path) -> None:
    target = tmp_path / "root" / "provisioner"

    done = _run_here(target, FILES)

    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip().splitlines()[-1] == UPLOAD_OK
    assert {p.name: (p.read_bytes(), _mode(p)) for p in target.iterdir()} == FILES   # nothing else left there
    assert _mode(target) == 0o700


def test_the_command_replaces_files_whole_and_leaves_the_others(tmp_path: Path) -> None:
    target = tmp_path / "provisioner"
    target.mkdir()
    (target / "server.key").write_bytes(b"old key")
    (target / "note").write_bytes(b"kept")
    old_inode = (target / "server.key").stat().st_ino

    done = _run_here(target, FILES)

    assert done.returncode == 0, done.stderr
    key = target / "server.key"
    assert key.read_bytes() == FILES["server.key"][0] and _mode(key) == 0o600
    assert key.stat().st_ino != old_inode          # a new file renamed over the old one, not rewritten in place
    assert (target / "note").read_bytes() == b"kept"


@pytest.mark.parametrize("trouble", ["a directory in the way", "a name the archive lacks"])
def test_a_failed_upload_exits_non_zero_without_the_ok_line_and_leaves_no_temporary_directory(
        tmp_path: Path, trouble: str) -> None:
    target = tmp_path / "provisioner"
    target.mkdir()
    names = sorted(FILES)
    if trouble == "a directory in the way":
        (target / "server.key").mkdir()
    else:
        names.append("wg0.conf")

    done = _run_here(target, FILES, names)

    assert done.returncode != 0
    assert UPLOAD_OK.encode() not in done.stdout
    assert not [p for p in target.iterdir() if p.name.startswith(".upload")]


def test_put_many_over_ssh_writes_the_files_on_the_host(sim_host: RunningHost) -> None:
    with sim_host.session() as ssh:
        ssh.put_many("/root/provisioner", FILES)
        ssh.put_many("/root/provisioner", {"server.key": (b"new", 0o600)})
        listed = ssh.run("cat /root/provisioner/server.key", timeout=10)

    assert listed.stdout == "new"
    assert sim_host.file("/root/provisioner/install.sh").read_bytes() == FILES["install.sh"][0]
    assert _mode(sim_host.file("/root/provisioner/install.sh")) == 0o700
    assert _mode(sim_host.file("/root/provisioner/ca.crt")) == 0o600


def test_put_many_refused_by_the_host_raises_with_the_hosts_reason(sim_host: RunningHost) -> None:
    sim_host.file("/root/provisioner/server.key").mkdir(parents=True)

    with pytest.raises(SSHTransferFailed) as refused, sim_host.session() as ssh:
        ssh.put_many("/root/provisioner", FILES)

    assert refused.value.transient is False
    assert refused.value.remote_path == "/root/provisioner" and "upload of 3 files failed" in str(refused.value)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_put_many_takes_plain_file_names_only(sim_host: RunningHost, name: str) -> None:
    with pytest.raises(ValueError), sim_host.session() as ssh:
        ssh.put_many("/root/provisioner", {name: (b"x", 0o600)})

    assert not sim_host.file("/root/escape").exists()
