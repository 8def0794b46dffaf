"""The layering holds: the import contracts (pyproject.toml, `make test`) catch a layer violation,
and the command line's help imports no adapter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_tree(tmp: Path) -> Path:
    work = tmp / "tree"
    work.mkdir()
    for name in ("provisioner", "jobs", "dashboard_api"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    return work


def _lint(work: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.skip("lint-imports is not installed in this environment (make venv installs it)")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=work, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(work)})


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    # the domain reaching up into a process
    ("provisioner/models.py", "import jobs.worker", "Layers"),
    # an adapter reaching into the domain
    ("provisioner/cloud/vultr.py", "import provisioner.models", "Layers"),
    # the sandbox reading what it receives with the product's own parser
    ("provisioner/sandbox/hosts.py", "import provisioner.cloudinit", "sandbox"),
])
def test_the_import_contracts_catch_a_deliberate_violation(tmp_path: Path, module: str, bad_import: str,
                                                          contract: str) -> None:
    work = _copy_tree(tmp_path)
    assert _lint(work).returncode == 0, "the tree as committed keeps every contract"
    target = work / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint(work)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and contract in result.stdout.split("Broken contracts")[-1]


def test_help_imports_no_adapter_or_scheduler() -> None:
    code = ("import sys, contextlib, io\n"
            "from provisioner.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = ['paramiko', 'cloudflare', 'vultr', 'apscheduler', 'stripe', 'fastapi', 'sqlalchemy',\n"
            "         'provisioner.cloud', 'provisioner.wiring', 'jobs.worker']\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
