"""kumoq's own Lua chunks: the ``.lua`` files beside this module, read once at import.

Each ``Chunk`` pairs a file's text with the chunk name the runtime loads it under. The names are
fixed (``=kumoq/sandbox``, not the file's path), so errors raised inside kumoq's Lua read the
same wherever kumoq is installed. The files ship as package data (``[tool.setuptools.
package-data]`` in pyproject.toml); a missing one fails the import of kumoq.lua.

In load order (kumoq.lua.runtime): ``SANDBOX`` (takes ``python``, ``debug`` and C modules away
from the policy), ``MESSAGE`` (the Message, EnvelopeAddress and conn_meta objects), ``CORE``
(``kumo.on``, dispatch, error locations, the event coroutines), ``KUMO`` (the ``kumo``
module), ``BUDGET`` (the time budget's count hook; last, so that the chunks before it keep
the raw ``setmetatable`` and coroutine functions). Each file's header comment says what it is
given and what it sets.

L2: imports only the standard library; must not import lupa or any other kumoq module.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["ALL", "BUDGET", "CORE", "KUMO", "MESSAGE", "SANDBOX", "Chunk"]


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
CORE: Final = _read("core.lua", "=kumoq/core")
KUMO: Final = _read("kumo.lua", "=kumoq/kumo")
BUDGET: Final = _read("budget.lua", "=kumoq/budget")
ALL: Final = (SANDBOX, MESSAGE, CORE, KUMO, BUDGET)
