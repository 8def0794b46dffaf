"""The command line as an operator meets it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.config import write_config


def run(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args], cwd=tmp, env=full_env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("provisioner: error: ")
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_it_prints_help_for_every_command(tmp_path: Path) -> None:
    for args in (["--help"], ["check", "--help"], ["servers", "--help"], ["events", "--help"], ["db", "--help"],
                 ["outbox", "--help"], ["outbox", "retry", "--help"], ["retry", "--help"]):
        proc = run(tmp_path, *args)
        assert proc.returncode == 0 and "usage: provisioner" in proc.stdout


def test_it_stops_on_a_misspelled_key_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, planner={"max_destroy_cuont": 3})
    proc = run(tmp_path, "--config", str(cfg), "db", "upgrade")
    assert_one_line_error(proc, 2, "planner.max_destroy_cuont: unknown key (did you mean 'max_destroy_count'?)")
    assert not (tmp_path / "provisioner.db").exists()


def test_it_stops_on_a_bad_value_with_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run(tmp_path, "--config", str(cfg), "check", env={"PROVISIONER_PLANNER_MAX_DESTROY_FRACTION": "2"})
    assert_one_line_error(proc, 2, "planner.max_destroy_fraction: must be at most 1, got 2.0")
    assert not (tmp_path / "provisioner.db").exists()


def test_it_reports_an_unreachable_database_with_exit_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, database={"url": "mysql+pymysql://prov:s3cret-pw@127.0.0.1:1/prov"})
    proc = run(tmp_path, "--config", str(cfg), "db", "upgrade")
    assert_one_line_error(proc, 1, "cannot connect to database mysql+pymysql://prov:***@127.0.0.1:1/prov")
    assert "s3cret-pw" not in proc.stderr + proc.stdout


def test_it_asks_for_a_config_when_none_is_found(tmp_path: Path) -> None:
    proc = run(tmp_path, "servers")
    assert_one_line_error(proc, 2, "no configuration: pass --config FILE or set PROVISIONER_CONFIG")


def test_it_asks_for_db_upgrade_before_use(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run(tmp_path, "--config", str(cfg), "servers")
    assert_one_line_error(proc, 1, "run `provisioner db upgrade`")


def test_it_lists_no_servers_on_a_fresh_database(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert run(tmp_path, "--config", str(cfg), "db", "upgrade").returncode == 0
    proc = run(tmp_path, "--config", str(cfg), "servers")
    assert proc.returncode == 0 and proc.stdout.strip() == "no servers yet"
    proc = run(tmp_path, "--config", str(cfg), "servers", "--json")
    assert json.loads(proc.stdout) == []


def test_it_says_which_server_is_unknown(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run(tmp_path, "--config", str(cfg), "db", "upgrade")
    proc = run(tmp_path, "--config", str(cfg), "events", "g0999")
    assert_one_line_error(proc, 2, "no server named 'g0999'")


def test_it_exits_2_on_usage_errors(tmp_path: Path) -> None:
    proc = run(tmp_path, "frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_db_downgrade_rolls_back_and_refuses_an_unknown_revision(tmp_path, capsys) -> None:  # noqa: ANN001
    from provisioner import db
    from provisioner.cli import main
    from tests.fixtures.config import write_config

    cfg = write_config(tmp_path)
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    assert main(["--config", str(cfg), "db", "downgrade", "9999"]) == 2
    assert "no schema revision '9999'" in capsys.readouterr().err
    assert main(["--config", str(cfg), "db", "downgrade", "0003"]) == 0
    engine = db.make_engine(f"sqlite:///{tmp_path}/provisioner.db")
    assert db.current_revision(engine) == "0003"
    engine.dispose()


def test_an_unknown_provisioner_variable_stops_the_command_naming_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run(tmp_path, "--config", str(cfg), "servers", env={"PROVISIONER_PLANNER_MAX_DESTROY": "3"})
    assert_one_line_error(proc, 2, "PROVISIONER_PLANNER_MAX_DESTROY: unknown environment variable")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    import os

    from sqlalchemy import insert

    from provisioner import db
    from provisioner.models import Server

    cfg = write_config(tmp_path)
    assert run(tmp_path, "--config", str(cfg), "db", "upgrade").returncode == 0
    engine = db.make_engine(f"sqlite:///{tmp_path}/provisioner.db")
    with engine.begin() as conn:        # enough rows that the output outgrows the pipe's buffer
        conn.execute(insert(Server), [{"subscription_id": str(i), "customer_id": str(i), "product_id": "1",
                                       "user_email": f"customer{i:05d}@example.com", "status": "Running",
                                       "server_name": f"g{i:05d}.vpn.example.test"} for i in range(3000)])
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"'{sys.executable}' -m provisioner --config '{cfg}' servers | head -n 1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("NAME")
    assert proc.stderr == "", proc.stderr          # no "internal error: BrokenPipeError", no traceback
    assert proc.returncode == 141                  # as a command killed by SIGPIPE
