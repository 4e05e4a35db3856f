"""Spool failure paths: a failed batch, a failed remove, and the order of a remove's unlinks.

The group-commit writer and ``BatchingSpool`` are the real ones; ``MemoryBackend`` is a backend
behind the ``BatchingSpool`` seam that fails on command, and holds its first commit on a gate so
the next submissions land together in one batch. (Empty or missing data, for every kind, is in
the spool contract: tests/unit/test_spool.py.)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kumoq.config.spool import SpoolDefinition
from kumoq.errors import SpoolError
from kumoq.message import new_spool_id
from kumoq.spool import LocalDiskSpool
from kumoq.spool.base import REMOVE, STORE, Op, Payload
from kumoq.spool.writer import BatchingSpool

NOW = 1_700_000_000.0


class MemoryBackend(BatchingSpool):
    """Applies a batch all or nothing; fails it when it stores a ``poison`` id or removes
    while ``fail_removes`` is set."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.items: dict[str, tuple[Payload | None, bytes]] = {}
        self.poison: set[str] = set()
        self.fail_removes = False
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[Op]] = []

    def _open(self) -> None:
        pass

    def _close_storage(self) -> None:
        pass

    def _commit(self, ops: list[Op]) -> int:
        self.gate.wait(5)
        self.batches.append(list(ops))
        for kind, msg_id, _data, _meta in ops:
            if kind == STORE and msg_id in self.poison:
                raise OSError(28, "No space left on device")
            if kind == REMOVE and self.fail_removes:
                raise OSError(30, "Read-only file system")
        for kind, msg_id, data, meta in ops:
            if kind == STORE:
                assert meta is not None
                self.items[msg_id] = (data, meta)
            else:
                self.items.pop(msg_id, None)
        return 1

    async def load_data(self, msg_id: str) -> bytes:
        data = self.items[msg_id][0]
        assert data is not None
        return data if isinstance(data, bytes) else b"".join(data)

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        for msg_id, (_data, meta) in list(self.items.items()):
            yield msg_id, meta


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    spool = MemoryBackend()
    spool.remove_retry_initial = 0.01
    await spool.start()
    yield spool
    spool.gate.set()
    await spool.close()


async def test_a_failing_store_does_not_fail_a_remove_in_its_batch(backend: MemoryBackend) -> None:
    done, other, bad = (new_spool_id(NOW) for _ in range(3))
    await backend.store(done, b"x", b"{}")
    backend.poison.add(bad)
    backend.gate.clear()  # hold the next commit so the two after it share a batch
    first = asyncio.ensure_future(backend.store(other, b"y", b"{}"))
    await asyncio.sleep(0.05)
    store_bad = asyncio.ensure_future(backend.store(bad, b"z", b"{}"))
    remove_done = asyncio.ensure_future(backend.remove(done))
    await asyncio.sleep(0.05)
    backend.gate.set()
    await first
    with pytest.raises(SpoolError, match="No space left"):
        await store_bad
    await remove_done
    assert any(len(b) == 2 for b in backend.batches), "the store and the remove shared a batch"
    assert done not in backend.items
    assert backend.pending_removes == frozenset()


async def test_a_failed_remove_is_retried_in_the_background(backend: MemoryBackend) -> None:
    msg_id = new_spool_id(NOW)
    await backend.store(msg_id, b"x", b"{}")
    backend.fail_removes = True
    await backend.remove(msg_id)  # does not raise
    assert backend.pending_removes == {msg_id}
    await asyncio.sleep(0.1)
    assert msg_id in backend.items  # still failing: still pending
    backend.fail_removes = False
    for _ in range(100):
        if not backend.pending_removes:
            break
        await asyncio.sleep(0.02)
    assert backend.pending_removes == frozenset()
    assert msg_id not in backend.items


async def test_close_makes_a_last_try_at_pending_removes() -> None:
    spool = MemoryBackend()
    spool.remove_retry_initial = 60.0  # the background retry would not come in time
    await spool.start()
    msg_id = new_spool_id(NOW)
    await spool.store(msg_id, b"x", b"{}")
    spool.fail_removes = True
    await spool.remove(msg_id)
    spool.fail_removes = False
    await spool.close()
    assert msg_id not in spool.items


def local_disk(root: Path) -> LocalDiskSpool:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(root / n)}) for n in ("data", "meta")
    )
    return LocalDiskSpool(data, meta)


async def test_local_disk_removes_the_meta_before_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the two removals (each an unlink, or a rename into ``free/`` when the
    file is recycled) must leave data without meta (never enumerated), not a meta that points
    at no data."""
    spool = local_disk(tmp_path)
    await spool.start()
    msg_id = new_spool_id(NOW)
    await spool.store(msg_id, b"data", b"{}")
    order: list[str] = []
    real_unlink, real_rename = os.unlink, os.rename

    def recording_unlink(path: str | os.PathLike[str], *args: object, **kw: object) -> None:
        order.append(str(path))
        real_unlink(path)

    def recording_rename(src: str, dst: str, *args: object, **kw: object) -> None:
        order.append(str(src))
        real_rename(src, dst)

    monkeypatch.setattr(os, "unlink", recording_unlink)
    monkeypatch.setattr(os, "rename", recording_rename)
    await spool.remove(msg_id)
    monkeypatch.undo()
    await spool.close()
    spooled = [p for p in order if p.endswith(msg_id[8:])]
    assert len(spooled) == 2
    assert "/meta/" in spooled[0]
    assert "/data/" in spooled[1]
