"""The host and process as the policy sees them: ``kumo.available_parallelism()``,
``kumo.set_diagnostic_log_filter(filter)`` and the file globs of
``kumo.eval_config_monitor_globs()``.

``available_parallelism()`` follows Rust's ``std::thread::available_parallelism``: the CPUs in
this process's affinity mask, capped by a cgroup v2 CPU quota (``cpu.max``), at least 1; the
environment variable ``KUMO_AVAILABLE_PARALLELISM`` overrides it, as in KumoMTA. kumoq runs the
policy on one thread, so the number only informs the policy (a pool size, a shard count).

``set_diagnostic_log_filter(filter)`` takes KumoMTA's ``EnvFilter`` directives, a comma-separated
list of ``level`` or ``target=level``, and sets Python logger levels from them. A target names a
logger: ``kumod`` (KumoMTA's daemon) is kumoq's ``kumoq`` logger, ``lua`` (where
``kumo.log_*`` writes in KumoMTA) is ``kumoq.policy``, ``a::b`` is ``a.b``, and any other name is
a Python logger name (``kumoq.smtp``, ``aiohttp``). A bare level sets the root logger. Levels:
``trace`` (5), ``debug``, ``info``, ``warn``, ``error``, ``off``. Like KumoMTA's filter, each call
replaces the last one: a logger the previous filter set and this one does not gets back the
level it had before. Span and field filters (``target[span]=level``) are refused.

``eval_globs(globs)`` expands KumoMTA's configuration monitoring globs
(``kumo.set_config_monitor_globs``; the default is ``DEFAULT_MONITOR_GLOBS``): ``*``, ``?``,
``[...]``, ``**`` for any depth and ``{a,b}`` alternatives; the matching files, deduplicated and
sorted. kumoq does not watch them: a change takes effect at a reload (SIGHUP,
``kumo.bump_config_epoch``).

L2: reads the environment, /proc, /sys and the globbed directories; imports only the standard
library and kumoq.lua.message (LuaApiError).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Final

from kumoq.lua.message import LuaApiError

__all__ = [
    "DEFAULT_MONITOR_GLOBS",
    "LEVELS",
    "available_parallelism",
    "eval_globs",
    "expand_braces",
    "parse_log_filter",
    "set_diagnostic_log_filter",
]

DEFAULT_MONITOR_GLOBS: Final = ("/opt/kumomta/etc/**/*.{lua,json,toml,yaml}",)
"""KumoMTA's effective default for ``kumo.set_config_monitor_globs``."""
_BRACES: Final = re.compile(r"\{([^{}]*)\}")

TRACE: Final = 5
LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
_TARGETS: Final = {"kumod": "kumoq", "lua": "kumoq.policy"}
_TARGET: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")
_before_filter: dict[str, int] = {}  # logger name -> its level before a filter set it


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    try:
        with open(path) as f:
            quota, _, period = f.read().strip().partition(" ")
    except OSError:
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_parallelism(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    forced = env.get("KUMO_AVAILABLE_PARALLELISM", "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise LuaApiError(f"KUMO_AVAILABLE_PARALLELISM must be an integer >= 1, got {forced!r}")
        return int(forced)
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(count, quota) if quota is not None else count)


def parse_log_filter(text: str) -> dict[str, int]:
    """``filter`` as {Python logger name ('' for the root): level}; raises LuaApiError."""
    levels: dict[str, int] = {}
    for raw in text.split(","):
        directive = raw.strip()
        if not directive:
            continue
        target, eq, level_name = directive.rpartition("=")
        if not eq:
            target, level_name = "", directive
        level = LEVELS.get(level_name.strip().lower())
        if level is None:
            if not eq and _TARGET.match(directive):  # a bare target enables everything in it
                target, level = directive, TRACE
            else:
                raise LuaApiError(
                    f"parsing log filter {text!r}: invalid level {level_name.strip()!r} "
                    f"(one of {', '.join(LEVELS)})"
                )
        target = target.strip()
        if target and not _TARGET.match(target):
            raise LuaApiError(
                f"parsing log filter {text!r}: {target!r}: kumoq supports target=level "
                "directives only (no span or field filters)"
            )
        name = _TARGETS.get(target, target.replace("::", "."))
        levels[name] = level
    return levels


def set_diagnostic_log_filter(text: str) -> None:
    levels = parse_log_filter(text)
    for name in list(_before_filter):
        if name not in levels:
            logging.getLogger(name or None).setLevel(_before_filter.pop(name))
    for name, level in levels.items():
        logger = logging.getLogger(name or None)
        _before_filter.setdefault(name, logger.level)
        logger.setLevel(level)


def expand_braces(pattern: str) -> list[str]:
    """``a.{x,y}`` as ``["a.x", "a.y"]``; nested and repeated groups are expanded too."""
    m = _BRACES.search(pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [e for alt in m.group(1).split(",") for e in expand_braces(head + alt + tail)]


def eval_globs(globs: Iterable[str]) -> list[str]:
    """The files the globs match (see the module docstring), deduplicated and sorted."""
    found: set[str] = set()
    for pattern in globs:
        if not isinstance(pattern, str):
            raise LuaApiError(f"expected a list of glob strings, got {pattern!r}")
        for one in expand_braces(pattern):
            found.update(p for p in glob.glob(one, recursive=True) if os.path.isfile(p))
    return sorted(found)
