"""Several processes per box (``kumoq serve --workers N``): who this worker is, where its spool
lives, and how the workers find each other.

``kumoq serve --workers N`` (kumoq.cli.supervisor) starts N worker processes, each a whole
kumoq running the same policy. They share the SMTP and HTTP listeners through
``SO_REUSEPORT``, so the kernel spreads connections over them. The supervisor tells each
worker who it is through the environment:

- ``KUMOQ_WORKER_INDEX``: this worker's number, ``0 .. N-1``;
- ``KUMOQ_WORKERS``: ``N``;
- ``KUMOQ_WORKERS_DIR``: the registry, a private directory (mode 0700) of the run, where each
  worker marks ``ready-<i>`` once it serves and writes ``worker-<i>.json``: its pid and the
  address of its private HTTP listener (127.0.0.1, an ephemeral port), through which the
  other workers reach its admin API and metrics;
- ``KUMOQ_WORKERS_TOKEN``: a random secret of the run; a request that carries it in
  ``X-Kumoq-Worker-Token`` comes from a sibling worker (``WORKER_TOKEN_HEADER``). Such a
  request that makes an admin rule may name the rule's id in ``X-Kumoq-Rule-Id``
  (``RULE_ID_HEADER``), so that a rule is one id on every worker (kumoq.http.fanout).

Spool directories (``spool_path``): worker 0 keeps the configured path itself, worker ``i``
uses ``<path>/worker-<i>``, so one process (``--workers 1``, or plain ``serve``) reads the
same spool as before. A restart with fewer workers re-enumerates every directory: worker ``i``
also takes over (``adopted_paths``) each ``<path>/worker-<j>`` with ``j >= N`` and
``j % N == i``; with one process that is all of them. None of KumoMTA's layouts keeps anything
named ``worker-<n>`` at the top of a spool directory (LocalDisk keeps ``data``, ``new``,
``lock``; RocksDB its own files), so the names cannot collide.

L0 (pure) apart from ``register``/``peers``, which read and write the registry directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "RULE_ID_HEADER",
    "WORKER_TOKEN_HEADER",
    "Peer",
    "WorkerSlot",
    "adopted_paths",
    "spool_path",
]

WORKER_TOKEN_HEADER: Final = "X-Kumoq-Worker-Token"
RULE_ID_HEADER: Final = "X-Kumoq-Rule-Id"

_WORKER_DIR: Final = re.compile(r"^worker-([1-9][0-9]*)$")


@dataclass(frozen=True, slots=True)
class Peer:
    """A sibling worker as its registry entry names it."""

    index: int
    pid: int
    admin_url: str  # http://127.0.0.1:PORT, its private listener


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process's place among ``count`` workers (``index`` from 0)."""

    index: int
    count: int
    registry: Path | None = None
    token: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSlot | None:
        """The slot the supervisor gave this process; None when it runs alone.

        Raises ValueError for inconsistent variables (a supervisor bug or a hand-made
        environment), naming the variable."""
        raw_index = environ.get("KUMOQ_WORKER_INDEX")
        raw_count = environ.get("KUMOQ_WORKERS")
        if raw_index is None and raw_count is None:
            return None
        try:
            index = int(raw_index or "")
            count = int(raw_count or "")
        except ValueError:
            raise ValueError(
                f"KUMOQ_WORKER_INDEX={raw_index!r} and KUMOQ_WORKERS={raw_count!r} must both be "
                "integers"
            ) from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"KUMOQ_WORKER_INDEX={index} is not in 0..{count - 1}")
        registry = environ.get("KUMOQ_WORKERS_DIR")
        return cls(
            index=index,
            count=count,
            registry=Path(registry) if registry else None,
            token=environ.get("KUMOQ_WORKERS_TOKEN", ""),
        )

    @property
    def name(self) -> str:
        return f"worker-{self.index}"

    def register(self, admin_url: str) -> None:
        """Publish this worker's private admin address (atomically: write, then rename)."""
        if self.registry is None:
            return
        entry = {"index": self.index, "pid": os.getpid(), "admin_url": admin_url}
        path = self.registry / f"{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)

    def mark_ready(self) -> None:
        """Tell the supervisor this worker serves (``ready-<i>``): a worker that exits before
        that, on the run's first start, stops the run (kumoq.cli.supervisor)."""
        if self.registry is not None:
            (self.registry / f"ready-{self.index}").touch()

    def unregister(self) -> None:
        if self.registry is not None:
            (self.registry / f"{self.name}.json").unlink(missing_ok=True)

    def peers(self) -> list[Peer]:
        """The other workers that have registered, by index (unreadable entries skipped)."""
        if self.registry is None:
            return []
        found: list[Peer] = []
        for i in range(self.count):
            if i == self.index:
                continue
            try:
                entry = json.loads((self.registry / f"worker-{i}.json").read_text())
                found.append(Peer(int(entry["index"]), int(entry["pid"]), str(entry["admin_url"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found


def spool_path(configured: str, slot: WorkerSlot | None) -> str:
    """Where ``slot`` keeps a spool configured at ``configured``: the path itself for worker 0
    (and a process running alone), ``<configured>/worker-<i>`` for the others."""
    if slot is None or slot.index == 0:
        return configured
    return os.path.join(configured, slot.name)


def adopted_paths(configured: str, slot: WorkerSlot | None, existing: list[str]) -> list[str]:
    """The spool directories of workers that no longer run which ``slot`` takes over.

    ``existing`` lists the names found at the top of ``configured``; those named
    ``worker-<j>`` with ``j >= count`` and ``j % count == index`` are this slot's, in order.
    Pure: the caller lists the directory."""
    count = 1 if slot is None else slot.count
    index = 0 if slot is None else slot.index
    taken: list[tuple[int, str]] = []
    for name in existing:
        match = _WORKER_DIR.match(name)
        if match is None:
            continue
        j = int(match.group(1))
        if j >= count and j % count == index:
            taken.append((j, os.path.join(configured, name)))
    return [path for _, path in sorted(taken)]
