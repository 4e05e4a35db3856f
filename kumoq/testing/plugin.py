"""pytest plugin: the ``kumoq`` fixture starts daemons under a policy and stops them afterwards.

Usage::

    def test_delivers(kumoq):
        daemon = kumoq(POLICY_TEXT)          # started, ports discovered
        daemon.send("a@example.com", ["b@example.com"])
        daemon.wait_for_maildir_count(1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kumoq.testing.harness import KumoqDaemon

__all__ = ["kumoq"]


@pytest.fixture
def kumoq(tmp_path: Path) -> Iterator[Callable[..., KumoqDaemon]]:
    """A factory: ``kumoq(policy_text, **options) -> KumoqDaemon`` (already started).

    Each call gets its own directory under ``tmp_path``; every daemon is stopped at teardown.
    Pass ``start=False`` to get a daemon that is not started yet.
    """
    daemons: list[KumoqDaemon] = []

    def make(
        policy: str, *, start: bool = True, name: str | None = None, **options: Any
    ) -> KumoqDaemon:
        workdir = tmp_path / (name or f"kumoq{len(daemons)}")
        daemon = KumoqDaemon(workdir, policy, **options)
        daemons.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in daemons:
        daemon.stop()
