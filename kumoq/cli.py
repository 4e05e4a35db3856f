"""The ``kumoq`` command line (filled in by the daemon wiring)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    return 0
