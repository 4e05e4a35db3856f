"""Helpers for the tests of KumoMTA's utility modules in the ``kumo`` table: real Lua through
lupa, a policy written to ``tmp_path/init.lua``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from kumoq.lua import PolicyEvents, PolicyRuntime


def load(tmp_path: Path, src: str, **kw: Any) -> PolicyRuntime:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(src))
    return PolicyRuntime(path, **kw)


def call(tmp_path: Path, body: str, *args: object, **kw: Any) -> Any:
    """Run ``body`` as the handler of an event and return its result as Python data."""
    rt = load(tmp_path, f"kumo.on('t', function(...)\n{textwrap.dedent(body)}\nend)\n", **kw)
    return PolicyEvents(rt).call("t", *args)


def lua_ok(tmp_path: Path, body: str) -> None:
    """Run ``body`` (asserts, in Lua) while the policy loads; fails on the first Lua error."""
    load(tmp_path, body)
