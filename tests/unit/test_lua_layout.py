"""How kumoq.lua is laid out: its Lua in .lua files, and imports that point one way.

- kumoq's own Lua lives in kumoq/lua/*.lua (read by kumoq.lua.chunks), ships in the wheel, and
  nowhere else: no Python module keeps Lua source in a string.
- kumo_api and message describe what they need of the runtime as Protocols and never import
  it (the runtime imports them); chunks imports only the standard library.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kumoq.lua import chunks

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = ROOT / "kumoq" / "lua"

# A line that only Lua source has (Python has no `local`, `then`, `do` or a bare `end`).
_LUA_LINE = re.compile(
    r"^\s*(local\s+\w|(local\s+)?function\b|end\b[),]*$|if\b.*\bthen$|for\b.*\bdo$)", re.M
)


def looks_like_lua_source(text: str) -> bool:
    """A multi-line text with at least three lines of Lua statements."""
    return text.strip().count("\n") >= 2 and len(_LUA_LINE.findall(text)) >= 3


def lua_files() -> list[Path]:
    return sorted(LUA_DIR.glob("*.lua"))


def test_every_lua_file_is_a_chunk_named_after_it() -> None:
    assert [p.name for p in lua_files()] == sorted(c.filename for c in chunks.ALL)
    for chunk in chunks.ALL:
        assert chunk.chunkname == "=kumoq/" + chunk.filename.removesuffix(".lua")
        assert chunk.source == (LUA_DIR / chunk.filename).read_text(encoding="utf-8")


def test_chunks_are_loaded_in_order() -> None:
    assert [c.chunkname for c in chunks.ALL] == [
        "=kumoq/sandbox",
        "=kumoq/message",
        "=kumoq/mime",
        "=kumoq/core",
        "=kumoq/kumo",
        "=kumoq/kumo_cache",
        "=kumoq/kumo_data",
        "=kumoq/kumo_time",
        "=kumoq/kumo_process",
        "=kumoq/kumo_shaping",
        "=kumoq/kumo_http",
        "=kumoq/kumo_throttle",
        "=kumoq/budget",
    ]


def test_the_detector_recognises_each_lua_file() -> None:
    """Keeps the scan below honest: it would have found these files' text in a Python string."""
    for chunk in chunks.ALL:
        assert looks_like_lua_source(chunk.source), chunk.filename
    for module in ("runtime.py", "kumo_api.py", "message.py", "chunks.py"):
        assert not looks_like_lua_source((LUA_DIR / module).read_text(encoding="utf-8")), module


def test_no_python_module_keeps_lua_source_in_a_string() -> None:
    found = []
    for path in sorted((ROOT / "kumoq").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and looks_like_lua_source(node.value)
        ]
    assert found == [], "Lua source belongs in kumoq/lua/*.lua (see kumoq.lua.chunks)"


@pytest.mark.slow
def test_the_wheel_ships_every_lua_file(tmp_path: Path) -> None:
    """Build a wheel offline from a copy of the tree (so the build leaves nothing in it)."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "kumoq", src / "kumoq", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--quiet", "-w", str(out), str(src)]
    env = os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    [wheel] = out.glob("kumoq-*.whl")
    expected = {f"kumoq/lua/{p.name}": p.read_bytes() for p in lua_files()}
    assert len(expected) == len(chunks.ALL)
    with zipfile.ZipFile(wheel) as zf:
        shipped = {name: zf.read(name) for name in zf.namelist() if name in expected}
    assert sorted(shipped) == sorted(expected)
    assert shipped == expected


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, including under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["kumo_api.py", "message.py"])
def test_python_api_modules_do_not_import_the_runtime(module: str) -> None:
    imported = imported_modules(LUA_DIR / module)
    assert not {"kumoq.lua.runtime", "kumoq.lua.events"} & imported


def test_chunks_imports_only_the_standard_library() -> None:
    imported = imported_modules(LUA_DIR / "chunks.py")
    assert imported
    assert not {name for name in imported if name.startswith(("kumoq", "lupa"))}


def test_the_import_scan_sees_type_checking_imports(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from kumoq.lua.runtime import PolicyRuntime\n"
        "    from kumoq.lua import events\n"
    )
    assert {"kumoq.lua.runtime", "kumoq.lua.events"} <= imported_modules(path)
