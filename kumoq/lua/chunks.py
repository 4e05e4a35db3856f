"""kumoq's own Lua chunks: the ``.lua`` files beside this module, read once at import.

Each ``Chunk`` pairs a file's text with the chunk name the runtime loads it under. The names are
fixed (``=kumoq/sandbox``, not the file's path), so errors raised inside kumoq's Lua read the
same wherever kumoq is installed. The files ship as package data (``[tool.setuptools.
package-data]`` in pyproject.toml); a missing one fails the import of kumoq.lua.

In load order (kumoq.lua.runtime): ``SANDBOX`` (takes ``python``, ``debug`` and C modules away
from the policy), ``MESSAGE`` (the Message, EnvelopeAddress and conn_meta objects; it loads
``MIME``, the MimePart, HeaderMap and AddressHeader objects), ``CORE`` (``kumo.on``, dispatch,
error locations, the event coroutines), ``KUMO`` (the ``kumo`` module; it loads ``KUMO_CACHE``,
``KUMO_DATA``, ``KUMO_TIME``, ``KUMO_PROCESS``, ``KUMO_SHAPING`` and ``KUMO_HTTP``, KumoMTA's
utility modules), ``BUDGET`` (the time budget's count hook; last, so that the chunks before it keep
the raw ``setmetatable`` and coroutine functions). Each file's header comment says what it is
given and what it sets.

L2: imports only the standard library; must not import lupa or any other kumoq module.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = [
    "ALL",
    "BUDGET",
    "CORE",
    "KUMO",
    "KUMO_CACHE",
    "KUMO_DATA",
    "KUMO_HTTP",
    "KUMO_PROCESS",
    "KUMO_SHAPING",
    "KUMO_TIME",
    "MESSAGE",
    "MIME",
    "SANDBOX",
    "Chunk",
]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One of kumoq's Lua source files and the chunk name it is loaded under."""

    filename: str
    chunkname: str
    source: str


def _read(filename: str, chunkname: str) -> Chunk:
    text = resources.files("kumoq.lua").joinpath(filename).read_text(encoding="utf-8")
    return Chunk(filename, chunkname, text)


SANDBOX: Final = _read("sandbox.lua", "=kumoq/sandbox")
MESSAGE: Final = _read("message.lua", "=kumoq/message")
MIME: Final = _read("mime.lua", "=kumoq/mime")  # loaded by message.lua
CORE: Final = _read("core.lua", "=kumoq/core")
KUMO: Final = _read("kumo.lua", "=kumoq/kumo")
# loaded by kumo.lua, in this order (kumoq.lua.kumo_extras hands them over)
KUMO_CACHE: Final = _read("kumo_cache.lua", "=kumoq/kumo_cache")
KUMO_DATA: Final = _read("kumo_data.lua", "=kumoq/kumo_data")
KUMO_TIME: Final = _read("kumo_time.lua", "=kumoq/kumo_time")
KUMO_PROCESS: Final = _read("kumo_process.lua", "=kumoq/kumo_process")
KUMO_SHAPING: Final = _read("kumo_shaping.lua", "=kumoq/kumo_shaping")
KUMO_HTTP: Final = _read("kumo_http.lua", "=kumoq/kumo_http")
KUMO_THROTTLE: Final = _read("kumo_throttle.lua", "=kumoq/kumo_throttle")
BUDGET: Final = _read("budget.lua", "=kumoq/budget")
ALL: Final = (
    SANDBOX,
    MESSAGE,
    MIME,
    CORE,
    KUMO,
    KUMO_CACHE,
    KUMO_DATA,
    KUMO_TIME,
    KUMO_PROCESS,
    KUMO_SHAPING,
    KUMO_HTTP,
    KUMO_THROTTLE,
    BUDGET,
)
