"""LocalDisk's recycling of files and directories (kumoq.spool.disk_tree).

A removed message's file and the directories it empties go to ``free/`` and are reused by later
stores. These tests hold the rules that make that safe: KumoMTA's paths are unchanged, an entry
is reused only after a sync that followed its retirement, nothing but empty directories and
files no message owns ever sits in ``free/``, and the bookkeeping survives restarts, resets and
ids that share a leaf directory (a hypothesis state machine over ``DiskTree``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kumoq.spool import LocalDiskSpool, disk_tree
from kumoq.spool.disk_tree import DiskTree
from tests.unit.spool_support import contents, definitions, ids, meta_for


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def _files_under(root: Path) -> list[Path]:
    return [Path(d, f) for d, _, names in os.walk(root) for f in names]


def _unsettled(spool: LocalDiskSpool) -> bool:
    return spool._data.unsettled


def _dirs_under(root: Path) -> list[Path]:
    return [Path(d, n) for d, names, _ in os.walk(root) for n in names]


async def test_a_removed_message_is_recycled_only_after_a_sync(tmp_path: Path) -> None:
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    a, b, c = ids(3)
    await spool.store(a, b"A" * 3000, meta_for(a))
    old = {_inode(Path(spool._data.path_for(a))), _inode(Path(spool._meta.path_for(a)))}
    await spool.remove(a)  # a batch without a sync: a's file and directories are pending
    assert _files_under(tmp_path / "data" / "data") == []
    assert _dirs_under(tmp_path / "data" / "data") == []  # retired, not left empty in data/
    assert spool._data.pool_sizes()[0] == 1
    assert _unsettled(spool)
    await spool.store(b, b"B", meta_for(b))  # must not overwrite a's file before the sync
    got_b = {_inode(Path(spool._data.path_for(b))), _inode(Path(spool._meta.path_for(b)))}
    assert not old & got_b
    assert not _unsettled(spool)  # b's batch synced after a's retirement
    await spool.store(c, b"C" * 10, meta_for(c))
    got_c = {_inode(Path(spool._data.path_for(c))), _inode(Path(spool._meta.path_for(c)))}
    assert got_c == old  # a's files, rewritten in place and cut to length
    assert await spool.load_data(c) == b"C" * 10
    assert await contents(spool) == {b: meta_for(b), c: meta_for(c)}
    assert os.listdir(tmp_path / "data" / "new") == []
    await spool.close()


async def test_the_pool_survives_a_restart_and_bad_entries_are_dropped(tmp_path: Path) -> None:
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    batch = ids(5)
    for msg_id in batch:
        await spool.store(msg_id, b"x" * 100, meta_for(msg_id))
    for msg_id in batch:
        await spool.remove(msg_id)
    files, dirs = spool._data.pool_sizes()
    assert files == 5
    assert dirs >= 5
    await spool.close()
    free = tmp_path / "data" / "free"
    (free / "dstray").mkdir()
    (free / "dstray" / "something").write_bytes(b"a file must never sit in a pool directory")
    (free / "fbig").write_bytes(b"x" * (disk_tree.RECYCLE_MAX_SIZE + 1))
    again = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await again.start()
    assert again._data.pool_sizes() == (files, dirs)
    assert not (free / "dstray").exists()
    assert not (free / "fbig").exists()
    (d,) = ids(1)
    await again.store(d, b"reborn", meta_for(d))  # adopted entries are reusable at once
    assert again._data.pool_sizes()[0] == files - 1
    assert await again.load_data(d) == b"reborn"
    await again.close()


async def test_directories_from_before_the_start_are_pruned(tmp_path: Path) -> None:
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    a, b = "0a0b0c0d" + "a" * 24, "0a0b0c0e" + "b" * 24  # they share a1, a2 and a3
    await spool.store(a, b"a", meta_for(a))
    await spool.close()
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    await spool.store(b, b"b", meta_for(b))  # beside a's untracked directories
    await spool.remove(a)
    await spool.remove(b)
    assert await contents(spool) == {}
    for tree in ("data", "meta"):
        assert _dirs_under(tmp_path / tree / "data") == []
    await spool.close()


async def test_a_tree_without_flush_deletes_instead_of_recycling_files(tmp_path: Path) -> None:
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk", flush=False))
    await spool.start()
    (a,) = ids(1)
    await spool.store(a, b"a", meta_for(a))
    await spool.remove(a)
    assert spool._data.pool_sizes()[0] == 0
    assert not _unsettled(spool)  # directories are reused at once: nothing is synced
    await spool.close()


async def test_the_bookkeeping_starts_afresh_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_tree, "TRACK_MAX", 3)
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    batch = [f"{k:08x}" + "ab" * 12 for k in range(0, 12 * 0x10000, 0x10000)]
    for msg_id in batch:
        await spool.store(msg_id, msg_id.encode(), meta_for(msg_id))
    assert len(spool._data._leaf) <= 3
    assert await contents(spool) == {m: meta_for(m) for m in batch}
    for msg_id in batch:
        await spool.remove(msg_id)
    assert await contents(spool) == {}
    assert _dirs_under(tmp_path / "data" / "data") == []
    await spool.close()


# -- the state machine ----------------------------------------------------------------------

_HALF = ["00", "01"]
# a1..a4 from two values each (16 leaves), and three tails: ids share every directory level,
# and sometimes a leaf (two ids in one a4 directory, as ids of two nodes could).
ID = st.builds(
    lambda a, b, c, d, tail: a + b + c + d + tail,
    *(st.sampled_from(_HALF) for _ in range(4)),
    st.sampled_from(["a" * 24, "b" * 24, "c" * 24]),
)
CONTENT = st.one_of(st.binary(max_size=64), st.just(b"L" * (disk_tree.RECYCLE_MAX_SIZE + 10)))


class TreeMachine(RuleBasedStateMachine):
    """Stores, removes, moves out, syncs, restarts and resets against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.saved = (disk_tree.FILE_POOL_MAX, disk_tree.DIR_POOL_MAX)
        setattr(disk_tree, "FILE_POOL_MAX", 3)  # noqa: B010 (Final): the overflow paths too
        setattr(disk_tree, "DIR_POOL_MAX", 5)  # noqa: B010
        self.root = tempfile.mkdtemp(prefix="kumoq-tree-")
        self.tree = DiskTree(self.root, flush=True)
        self.tree.open()
        self.model: dict[str, bytes] = {}
        self.moved = 0

    def teardown(self) -> None:
        setattr(disk_tree, "FILE_POOL_MAX", self.saved[0])  # noqa: B010
        setattr(disk_tree, "DIR_POOL_MAX", self.saved[1])  # noqa: B010
        shutil.rmtree(self.root, ignore_errors=True)

    def _write(self, msg_id: str, content: bytes) -> None:
        temp, size = self.tree.take_file(msg_id)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, content)
            if len(content) < size:
                os.ftruncate(fd, len(content))
        finally:
            os.close(fd)
        self.tree.place(msg_id, temp)

    @rule(msg_id=ID, content=CONTENT)
    def store(self, msg_id: str, content: bytes) -> None:
        self._write(msg_id, content)
        self.model[msg_id] = content

    @rule(msg_id=ID)
    def remove(self, msg_id: str) -> None:
        self.tree.remove(msg_id)
        self.model.pop(msg_id, None)

    @rule(msg_id=ID)
    def move_out(self, msg_id: str) -> None:
        os.makedirs(self.tree.quarantine_dir, exist_ok=True)
        self.moved += 1
        dest = f"{self.tree.quarantine_dir}/{self.moved}"
        assert self.tree.move_out(msg_id, dest) == (msg_id in self.model)
        self.model.pop(msg_id, None)

    @rule()
    def sync(self) -> None:
        self.tree.settle()

    @rule()
    def restart(self) -> None:
        self.tree = DiskTree(self.root, flush=True)
        self.tree.open()

    @rule()
    def reset_bookkeeping(self) -> None:
        self.tree._forget()

    @invariant()
    def consistent(self) -> None:
        found = {i: content for page in self.tree.scan() for i, content in page}
        assert found == self.model
        data = Path(self.tree.data_dir)
        assert len(_files_under(data)) == len(self.model)
        free = Path(self.tree.free_dir)
        pool_files = {os.stat(p).st_ino for p in free.iterdir() if p.is_file()}
        assert not pool_files & {os.stat(p).st_ino for p in _files_under(data)}
        for d in free.iterdir():
            assert not d.is_dir() or os.listdir(d) == [], f"{d} is not empty"
        if not self.model:
            assert _dirs_under(data) == [], "directories left behind"


def _case(machine: Any) -> Any:
    case = machine.TestCase
    case.settings = settings(
        max_examples=int(os.environ.get("SPOOL_TREE_EXAMPLES", "30")),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return case


TestTree = _case(TreeMachine)


async def test_removes_run_after_the_stores_of_their_batch(tmp_path: Path) -> None:
    """LocalDisk commits the submissions that only remove after the others (``removes_last``),
    except when a remove and a store name the same id: then the order they came in holds."""
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    a, b, c, d = ids(4)
    for msg_id in (a, c):
        await spool.store(msg_id, b"old", meta_for(msg_id))
    entered, release = threading.Event(), threading.Event()
    real = spool.syncfs

    def held(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real(fd)

    spool.syncfs = held
    blocker = asyncio.create_task(spool.store(d, b"d", meta_for(d)))
    assert await asyncio.to_thread(entered.wait, 10)
    batches = spool.stats.batches
    # queued while the writer is busy: they are taken as one batch, then split in two
    pending = [
        asyncio.create_task(spool.remove(a)),
        asyncio.create_task(spool.store(b, b"b", meta_for(b))),
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(blocker, *pending)
    assert spool.stats.batches - batches == 2 + 1  # d's batch, then b's, then a's remove
    # a remove then a store of the same id in one batch: stored (one batch, in order)
    spool.syncfs = held
    release.clear()
    entered.clear()
    blocker = asyncio.create_task(spool.store(d, b"d2", meta_for(d)))
    assert await asyncio.to_thread(entered.wait, 10)
    pending = [
        asyncio.create_task(spool.remove(c)),
        asyncio.create_task(spool.store(c, b"new", meta_for(c, 1))),
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(blocker, *pending)
    spool.syncfs = real
    assert await contents(spool) == {b: meta_for(b), c: meta_for(c, 1), d: meta_for(d)}
    assert await spool.load_data(c) == b"new"
    await spool.close()
