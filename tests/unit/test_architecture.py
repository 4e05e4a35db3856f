"""The layer rules hold, module by module, and the checks that enforce them do catch a break.

- The pure modules (the ``pure modules`` contract in pyproject.toml) pull in no event loop,
  socket, thread, database or Lua code when imported in a fresh interpreter, and their source
  reads no clock and opens no file (time comes in as ``now``).
- A deliberate violation planted in a copy of the tree, an upward import inside
  ``kumoq.scheduler`` and ``import asyncio`` in a pure module, is caught by ``lint-imports``
  and by the fresh-interpreter check.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUNTIME_FORBIDDEN = frozenset(
    {
        "aiohttp",
        "asyncio",
        "concurrent",
        "dns",
        "lupa",
        "rocksdict",
        "selectors",
        "socket",
        "sqlite3",
        "ssl",
        "subprocess",
        "threading",
        "uvloop",
    }
)
"""Top-level packages no pure module may bring in, directly or through a library."""

CLOCK_READS = frozenset({"now", "utcnow", "today", "time", "time_ns", "monotonic",
                         "monotonic_ns", "perf_counter", "perf_counter_ns", "sleep"})  # fmt: skip
OS_ALLOWED = frozenset({"urandom", "fspath", "environ"})


def pure_modules(root: Path = ROOT) -> list[str]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (pure,) = [c for c in contracts if c["name"] == "pure modules"]
    modules: list[str] = pure["source_modules"]
    return modules


def runtime_violations(modules: list[str], root: Path = ROOT) -> dict[str, list[str]]:
    """For each module, the forbidden packages it loads when imported alone, in a fresh
    interpreter with ``root`` first on the path."""
    script = (
        "import json, sys\n"
        "base = set(sys.modules)\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n"
        "    __import__(name)\n"
        "    out[name] = sorted(set(sys.modules) - before)\n"
        "print(json.dumps(out))\n"
    )
    found: dict[str, list[str]] = {}
    for module in modules:  # one interpreter each, so no module hides behind another's imports
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run(
            [sys.executable, "-c", script, module],
            capture_output=True, text=True, env=env, cwd=root, check=True,
        )  # fmt: skip
        loaded: list[str] = json.loads(proc.stdout)[module]
        bad = sorted({m.split(".")[0] for m in loaded} & RUNTIME_FORBIDDEN)
        if bad:
            found[module] = bad
    return found


def source_violations(path: Path) -> list[str]:
    """Clock reads, file opens and OS calls in one module's source, as ``line: text``."""
    tree = ast.parse(path.read_text(), str(path))
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            if any(name.split(".")[0] == "time" for name in names):
                problems.append(f"{node.lineno}: imports time")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            problems.append(f"{node.lineno}: open()")
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            if func.attr in CLOCK_READS and owner in {"time", "datetime", "date", "loop"}:
                problems.append(f"{node.lineno}: {owner}.{func.attr}()")
            elif owner == "os" and func.attr not in OS_ALLOWED:
                problems.append(f"{node.lineno}: os.{func.attr}()")
    return problems


def module_path(module: str, root: Path = ROOT) -> Path:
    path = root / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_the_pure_contract_lists_real_modules() -> None:
    modules = pure_modules()
    assert len(modules) >= 20
    for module in modules:
        assert module_path(module).is_file(), module


def test_pure_modules_load_no_event_loop_socket_thread_or_lua() -> None:
    assert runtime_violations(pure_modules()) == {}


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_reads_no_clock_and_opens_no_file(module: str) -> None:
    assert source_violations(module_path(module)) == []


def test_source_scan_flags_clock_reads_and_file_opens(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import time\nfrom datetime import datetime\nimport os\n"
        "a = time.monotonic()\nb = datetime.now()\nc = open('x')\nd = os.stat('x')\n"
        "e = os.urandom(4)\n"
    )
    assert source_violations(planted) == [
        "1: imports time",
        "4: time.monotonic()",
        "5: datetime.now()",
        "6: open()",
        "7: os.stat()",
    ]


@pytest.mark.slow
def test_a_planted_violation_is_caught(tmp_path: Path) -> None:
    """Copy the tree, plant an upward import inside kumoq.scheduler and an asyncio import in a
    pure module: lint-imports fails naming both contracts, and the fresh-interpreter check
    names the module."""
    shutil.copytree(
        ROOT / "kumoq", tmp_path / "kumoq", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    wheel = tmp_path / "kumoq" / "scheduler" / "timerwheel.py"
    wheel.write_text(
        wheel.read_text() + "\nimport asyncio  # noqa\nimport kumoq.scheduler.manager  # noqa\n"
    )
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [str(lint_imports), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "scheduler modules BROKEN" in proc.stdout
    assert "pure modules BROKEN" in proc.stdout
    assert "kumoq.scheduler.timerwheel -> kumoq.scheduler.manager" in proc.stdout
    found = runtime_violations(["kumoq.scheduler.timerwheel"], root=tmp_path)
    assert "asyncio" in found["kumoq.scheduler.timerwheel"]


MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """One concept per module, 150 to 500 lines as a rule: past 500, split it by concept."""
    over = {
        str(path.relative_to(ROOT)): n
        for folder in ("kumoq", "bench", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert over == {}
