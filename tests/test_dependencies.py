"""What the code imports is what requirements.txt declares, and requirements.lock (what
`make` installs, with hashes) pins exactly requirements.txt's versions.  Fails when a
module starts importing an undeclared package, a declared one falls out of use, or a pin
changes without `make lock`."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("provisioner", "jobs", "dashboard_api", "tests", "bench")
OUR_MODULES = {*CODE, "_common"}   # bench/_common.py
# Declared though never imported by name: the reason each is needed.
NOT_IMPORTED = {
    "pymysql": "SQLAlchemy's MySQL/MariaDB driver, named in mysql+pymysql:// URLs",
    "pytest-timeout": "pytest plugin: the suite's per-test timeout (pyproject.toml)",
    "pytest-xdist": "pytest plugin: `make test` runs the suite on parallel workers (-n)",
    "ruff": "`make test` runs it",
    "mypy": "`make test` runs it",
    "import-linter": "`make test` runs lint-imports: the layering contracts in pyproject.toml",
    "types-pyyaml": "PyYAML's type stubs, for mypy",
    "uvloop": "uvicorn's event loop (loop=\"uvloop\" in dashboard_api.server)",
    "httptools": "uvicorn's HTTP parser (http=\"httptools\" in dashboard_api.server)",
}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.MULTILINE)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {normalise(name): version for name, version in PIN.findall(path.read_text(encoding="utf-8"))}


def imported_distributions() -> set[str]:
    modules: set[str] = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - OUR_MODULES
    by_module = packages_distributions()
    missing = sorted(m for m in third_party if m not in by_module)
    assert not missing, f"imported but not installed: {missing}"
    return {normalise(d) for m in third_party for d in by_module[m]}


def test_every_imported_package_is_declared_and_every_declared_one_used() -> None:
    declared = set(pins(ROOT / "requirements.txt"))
    imported = imported_distributions()
    assert sorted(imported - declared) == [], "imported but not in requirements.txt"
    assert sorted(declared - imported - set(NOT_IMPORTED)) == [], "in requirements.txt but imported nowhere"


def test_the_lock_pins_what_requirements_txt_pins_with_hashes() -> None:
    lock_text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    locked = pins(ROOT / "requirements.lock")
    wanted = pins(ROOT / "requirements.txt")
    assert {k: locked.get(k) for k in wanted} == wanted, "requirements.txt changed: run `make lock`"
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock_text.split("\n\n", 1)[-1].strip())
    unhashed = [e.split(" ", 1)[0] for e in entries if "==" in e and "--hash=sha256:" not in e]
    assert unhashed == []
