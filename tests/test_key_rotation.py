"""`provisioner secrets rotate`: every sealed value re-sealed under the new key while the worker
runs, resumable, and never a key, a token or a secret in any log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from provisioner import rotation
from provisioner.cli import main
from provisioner.models import SEALED_COLUMNS, Server, ServerSealed
from provisioner.secrets import SecretBox
from tests.fixtures.config import dump_toml
from tests.fixtures.stack import Stack, start_worker, wait_until


def with_keys(stack: Stack, keys: list[str], name: str) -> Path:
    """A copy of the stack's config with other Fernet keys."""
    data = tomllib.loads(stack.config_path.read_text())
    data["secrets"] = {"fernet_keys": keys}
    path = stack.tmp / name
    path.write_text(dump_toml(data))
    return path


def sealed_values(stack: Stack) -> list[str]:
    with stack.app.sessions() as s:
        return [v for col in SEALED_COLUMNS for v in s.scalars(select(col).where(col.is_not(None)))]


def run_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    return subprocess.run([sys.executable, "-m", "provisioner", "--config", str(cfg), *args], cwd=cfg.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def test_it_reseals_everything_under_the_new_key_while_the_worker_runs(stack: Stack) -> None:
    # Given servers whose secrets (PKI, .ovpn, root password) are sealed with the old key
    old = stack.app.settings.secrets.fernet_keys[0]
    for sub in (1, 2):
        stack.create_server(sub, f"user{sub}@example.com")
    plaintexts = [SecretBox([old]).open(v) for v in sealed_values(stack)]
    tokens_before = sealed_values(stack)
    assert len(tokens_before) == 6
    # and the new key put first, the old kept after it; the worker restarted with both and busy
    # building two more servers
    new = Fernet.generate_key().decode()
    both = with_keys(stack, [new, old], "both-keys.toml")
    for sub in (3, 4):
        stack.add_subscription(sub, f"user{sub}@example.com")
    worker_log = stack.tmp / "worker.log"
    worker = start_worker(both, worker_log)
    try:
        assert wait_until(lambda: len(stack.app.all_servers()) == 4, 60), worker_log.read_text()
        # When the rotation runs (small batches) while the worker works
        rotated = run_cli(both, "secrets", "rotate", "--batch", "2")
        assert rotated.returncode == 0, rotated.stderr
        assert "done: every stored secret opens with the first key alone" in rotated.stdout
        assert wait_until(lambda: all(r.status == "Running" for r in stack.app.all_servers()), 90), \
            worker_log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # Then every sealed value opens with the new key alone, and says what it said before
    only_new = SecretBox([new])
    after = sealed_values(stack)
    assert len(after) == 12
    opened = [only_new.open(v) for v in after]
    assert all(p in opened for p in plaintexts)
    assert not any(SecretBox([old]).sealed_with_primary(v) for v in after)
    # and with the old key dropped, the worker's work still opens them: a rebuild reinstalls the PKI
    new_only = with_keys(stack, [new], "new-key.toml")
    rebuilt = run_cli(new_only, "rebuild", "#1", "--location", "ams", "--wait", "60")
    assert rebuilt.returncode == 0 and "Running" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    # and no log or output holds a key, a token or a secret
    logs = worker_log.read_text() + rotated.stdout + rotated.stderr + rebuilt.stdout + rebuilt.stderr
    for secret in [old, new, *tokens_before, *after]:
        assert secret not in logs
    for p in plaintexts:
        for line in p.decode("utf-8", "replace").splitlines():
            if len(line) >= 24 and "BEGIN" not in line and "END" not in line:
                assert line not in logs


def test_an_interrupted_rotation_resumes_where_it_stopped(stack: Stack) -> None:
    for sub in (1, 2, 3):
        stack.create_server(sub, f"user{sub}@example.com")
    old = stack.app.settings.secrets.fernet_keys[0]
    box = SecretBox([Fernet.generate_key().decode(), old])

    def interrupt(name: str, report: rotation.ColumnReport) -> None:
        raise KeyboardInterrupt  # a Ctrl-C after the first batch was committed

    with pytest.raises(KeyboardInterrupt):
        rotation.rotate(stack.app.sessions, box, batch=1, progress=interrupt)
    first = rotation.rotate(stack.app.sessions, box, batch=1)
    assert first.done
    assert sum(c.resealed for c in first.columns.values()) == 9 - 1   # the one done before the interrupt stays
    assert all(c.current == 3 for c in first.columns.values())
    again = rotation.rotate(stack.app.sessions, box, batch=50)
    assert again.done and sum(c.resealed for c in again.columns.values()) == 0


def test_it_reports_a_value_sealed_meanwhile_with_an_old_key(stack: Stack) -> None:
    rid = stack.create_server(1, "ann@example.com")
    old = stack.app.settings.secrets.fernet_keys[0]
    box = SecretBox([Fernet.generate_key().decode(), old])
    wrote = []

    def stale_writer(name: str, report: rotation.ColumnReport) -> None:
        if not wrote:  # a process that still seals with the old key writes a root password meanwhile
            with stack.app.sessions() as s:
                row = s.get(Server, rid)
                assert row is not None
                row.root_password_enc = SecretBox([old]).seal(b"hunter2")
                s.commit()
            wrote.append(name)

    report = rotation.rotate(stack.app.sessions, box, progress=stale_writer, columns=[ServerSealed.ovpn_file_enc,
                                                                                       ServerSealed.root_password_enc])
    assert wrote == ["provisioner_server_sealed.ovpn_file_enc"]
    assert report.columns["provisioner_server_sealed.root_password_enc"].resealed == 1  # the later pass caught it
    assert report.done


def test_it_names_rows_no_key_opens_and_exits_1(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    rid = stack.create_server(1, "ann@example.com")
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        row.root_password_enc = SecretBox([Fernet.generate_key().decode()]).seal(b"lost")
        s.commit()
    old = stack.app.settings.secrets.fernet_keys[0]
    cfg = with_keys(stack, [Fernet.generate_key().decode(), old], "both.toml")
    code = main(["--config", str(cfg), "secrets", "rotate"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"provisioner_server_sealed.root_password_enc: 0 re-sealed; 0 under the first key; 1 open with no " \
           f"configured key (rows {rid})" in out
    assert err.strip().startswith("provisioner: error: some stored secrets open with none of the configured keys")
    assert "provisioner_server_sealed.secrets_enc: 1 re-sealed; 1 under the first key" in out


@pytest.mark.parametrize(("args", "needle"), [
    ((), "secrets.fernet_keys holds one key, so there is nothing to rotate from"),
    (("--batch", "0"), "--batch must be at least 1"),
])
def test_it_refuses_to_rotate_without_a_new_key_in_one_line(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                            args: tuple[str, ...], needle: str) -> None:
    stack.create_server(1, "ann@example.com")
    before = sealed_values(stack)
    code = main(["--config", str(stack.config_path), "secrets", "rotate", *args])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert sealed_values(stack) == before
