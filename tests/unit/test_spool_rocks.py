"""What is particular to the RocksDB spool (kumoq.spool.rocks); the contract it shares with the
other kinds is in tests/unit/test_spool.py.

- ``rocks_params`` reach RocksDB (read back from the OPTIONS file RocksDB writes);
- a write stall is waited out, up to ``store_deadline``; a big batch is cut in WriteBatches
  of which only the last syncs; ``limit_concurrent_loads`` bounds the reads in flight;
- a full disk (a real tmpfs: needs root, as the other disk-full tests) fails the stores made
  while it is full, and the spool takes stores again once there is room, without a restart;
- a damaged database stops the start with what to do, and the repair it names works.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rocksdict import WriteBatch, WriteOptions

from kumoq.config.spool import SpoolDefinition
from kumoq.errors import SpoolError
from kumoq.message import new_spool_id
from kumoq.spool import RocksSpool, open_spool
from kumoq.spool.rocks import DB_DIR

NOW = 1_700_000_000.0
MiB = 1024 * 1024


def rocks_spool(root: Path, **params: Any) -> RocksSpool:
    data, meta = (
        SpoolDefinition.from_mapping(
            {"name": n, "path": str(root / n), "kind": "RocksDB", "rocks_params": params}
        )
        for n in ("data", "meta")
    )
    spool = open_spool(data, meta)
    assert isinstance(spool, RocksSpool)
    return spool


def ids(n: int) -> list[str]:
    return [new_spool_id(NOW) for _ in range(n)]


async def contents(spool: RocksSpool) -> dict[str, bytes]:
    return {msg_id: meta async for msg_id, meta in spool.enumerate()}


async def test_rocks_params_reach_rocksdb(tmp_path: Path) -> None:
    spool = rocks_spool(
        tmp_path,
        write_buffer_size="1 MiB",
        compression_type="None",
        max_open_files=100,
        paranoid_checks=True,
        level_compaction_dynamic_level_bytes=True,
        level0_stop_writes_trigger=30,
        compaction_readahead_size=2 * MiB,
        log_file_time_to_roll="1 hour",
        obsolete_files_period="10 minutes",
    )
    await spool.start()
    await spool.close()
    (options,) = sorted((tmp_path / "data" / DB_DIR).glob("OPTIONS-*"))[-1:]
    text = options.read_text()
    for setting in (
        "write_buffer_size=1048576",
        "compression=kNoCompression",
        "max_open_files=100",
        "paranoid_checks=true",
        "level_compaction_dynamic_level_bytes=true",
        "level0_stop_writes_trigger=30",
        "compaction_readahead_size=2097152",
        "log_file_time_to_roll=3600",
        "delete_obsolete_files_period_micros=600000000",
        "keep_log_file_num=10",
    ):
        assert re.search(rf"^\s*{setting}$", text, re.M), setting


Write = Callable[[WriteBatch, WriteOptions], None]


def stalling(real: Write, times: float) -> tuple[Write, list[bool]]:
    """A ``write`` that answers as RocksDB does in a write stall ``times`` times, then writes;
    and the list of the ``sync`` flag of every call."""
    calls: list[bool] = []

    def write(batch: WriteBatch, options: WriteOptions) -> None:
        calls.append(options.sync)
        if len(calls) <= times:
            raise Exception("Result incomplete: Write stall")  # rocksdict's plain Exception
        real(batch, options)

    return write, calls


async def test_a_write_stall_is_waited_out(tmp_path: Path) -> None:
    spool = rocks_spool(tmp_path)
    await spool.start()
    spool.write, calls = stalling(spool.write, 3)
    (msg_id,) = ids(1)
    await spool.store(msg_id, b"data", b"meta")
    assert calls == [True] * 4  # retried with the same (synced) options
    assert await spool.load_data(msg_id) == b"data"
    await spool.close()


async def test_a_stall_longer_than_store_deadline_fails_the_store(tmp_path: Path) -> None:
    spool = rocks_spool(tmp_path, store_deadline=0.3)
    await spool.start()
    real = spool.write
    spool.write, calls = stalling(real, float("inf"))
    a, b = ids(2)
    started = time.monotonic()
    with pytest.raises(SpoolError, match=r"held writes back for more than 0.3 s"):
        await spool.store(a, b"data", b"meta")
    assert 0.3 <= time.monotonic() - started < 5
    assert len(calls) > 3
    spool.write = real  # the stall is over: no reopen needed, the next store goes through
    await spool.store(b, b"data", b"meta")
    assert await contents(spool) == {b: b"meta"}
    await spool.close()


async def test_a_big_batch_is_cut_and_only_its_last_write_syncs(tmp_path: Path) -> None:
    spool = rocks_spool(tmp_path)
    await spool.start()
    spool.write, calls = stalling(spool.write, 0)
    many = ids(40)
    body = b"x" * MiB
    await spool.store_many([(i, (b"Received: x\r\n", body), b"meta") for i in many])
    assert calls == [False, False, True]  # 40 MiB in WriteBatches of about 16 MiB
    assert set(await contents(spool)) == set(many)
    assert await spool.load_data(many[-1]) == b"Received: x\r\n" + body
    await spool.close()


async def test_limit_concurrent_loads(tmp_path: Path) -> None:
    spool = rocks_spool(tmp_path, limit_concurrent_loads=2)
    await spool.start()
    many = ids(12)
    await spool.store_many([(i, i.encode(), b"m") for i in many])
    real_get = spool._get
    running, most = 0, 0

    def observed_get(key: bytes) -> bytes | None:  # the real read, counted and slowed down
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.02)
        running -= 1
        return real_get(key)

    spool._get = observed_get  # type: ignore[method-assign]
    loaded = await asyncio.gather(*(spool.load_data(i) for i in many))
    assert loaded == [i.encode() for i in many]
    assert most == 2
    await spool.close()


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (needs root, as the other disk-full tests)."""
    where.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"these tests need a tmpfs (run them as root); {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs under tmp_path."""
    with mounted_tmpfs(tmp_path / "fs", "64m") as where:
        yield where


@pytest.fixture
def big_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB tmpfs: room for RocksDB's WAL to reach its first memtable flush (64 MiB by
    default) before the disk is filled on purpose. On 64 MiB, 8 busy writers filled it with
    the WAL of messages already removed, in about 2 s, before the test filled anything: the
    database could then not be reopened (its recovery writes an SST) and freeing the filler,
    which had found no room, freed nothing."""
    with mounted_tmpfs(tmp_path / "fs", "256m") as where:
        yield where


def fill(where: Path) -> Path:
    filler = where / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


@pytest.mark.integration
async def test_a_full_disk_fails_stores_until_there_is_room_again(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = rocks_spool(tmpfs)
    await spool.start()
    before, during, after = ids(3)
    await spool.store(before, b"x" * 2048, b"meta")
    filler = await asyncio.to_thread(fill, tmpfs)
    with pytest.raises(SpoolError, match="No space left on device"):
        await spool.store(during, b"x" * 2048 * 64, b"meta")
    filler.unlink()
    # RocksDB refuses every write after a failed one until it is reopened: the spool does it.
    await spool.store(after, b"x" * 2048, b"meta")
    assert "reopening the database after a failed write" in caplog.text
    assert {before, after} <= set(await contents(spool))
    assert await spool.load_data(after) == b"x" * 2048
    await spool.close()
    spool = rocks_spool(tmpfs)
    await spool.start()
    assert {before, after} <= set(await contents(spool))
    await spool.close()


UNDER_LOAD = r"""
import asyncio, os, sys, time
from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool import open_spool

root = sys.argv[1]

def fill():
    # unbuffered: nothing is left to flush when the file closes on a full disk
    with open(f"{root}/filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass

async def main():
    spool = open_spool(*(SpoolDefinition.from_mapping(
        {"name": n, "path": f"{root}/{n}", "kind": "RocksDB"}) for n in ("data", "meta")))
    await spool.start()
    counts = {"ok": 0, "failed": 0}
    stop = False

    async def worker():
        while not stop:
            msg_id = new_spool_id(time.time())
            try:
                await spool.store(msg_id, b"x" * 2500, b"m" * 300)
                counts["ok"] += 1
                await spool.remove(msg_id)
            except Exception:
                counts["failed"] += 1
                await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(worker()) for _ in range(8)]
    for phase in ("before", "full", "after"):
        if phase == "full":
            await asyncio.to_thread(fill)
        if phase == "after":
            os.unlink(f"{root}/filler")
        counts.update(ok=0, failed=0)
        await asyncio.sleep(2)
        for _ in range(26):  # a loaded machine: give the first settlement up to 15 s in all
            if counts["ok"] + counts["failed"]:
                break
            await asyncio.sleep(0.5)
        print(phase, counts["ok"], counts["failed"], flush=True)
    stop = True
    await asyncio.wait(tasks, timeout=30)
    await spool.close()
    print("closed", flush=True)

asyncio.run(main())
"""


@pytest.mark.integration
@pytest.mark.slow
def test_a_full_disk_under_load_neither_hangs_nor_stays_stuck(big_tmpfs: Path) -> None:
    """Stores and removes from 8 tasks, the disk filled, then freed: while it is full stores
    settle (they fail at once), none hangs; once freed they go through; close returns. In a
    child process with a deadline: a regression hangs in RocksDB with the GIL held (closing a
    database after a failed write with ``Rdict.close()``, which flushes, did)."""
    done = subprocess.run(
        [sys.executable, "-c", UNDER_LOAD, str(big_tmpfs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert out[-1] == "closed", done.stdout
    phases = {
        p: tuple(map(int, rest.split())) for p, _, rest in (x.partition(" ") for x in out[:-1])
    }
    assert phases["before"][0] > 100, phases
    assert phases["before"][1] == 0, phases
    # Stores go on settling: they fail at once, or (while RocksDB writes into the WAL space it
    # preallocated) succeed; none hangs.
    assert sum(phases["full"]) > 0, phases
    assert phases["after"][0] > 100, phases  # taking mail again, without a restart


async def test_a_damaged_database_tells_the_operator_what_to_do(tmp_path: Path) -> None:
    spool = rocks_spool(tmp_path)
    await spool.start()
    many = ids(300)
    await spool.store_many([(i, b"data of " + i.encode(), b"{}") for i in many])
    await spool.close()
    db = tmp_path / "data" / DB_DIR
    (manifest,) = db.glob("MANIFEST-*")
    with manifest.open("r+b") as f:
        f.write(b"\xff" * 200)

    text = ""
    for _ in range(2):  # the second time: the same error, not "locked" (the lock was released)
        spool = rocks_spool(tmp_path)
        with pytest.raises(SpoolError) as info:
            await spool.start()
        text = str(info.value)
        assert text.startswith(f"spool database {db.absolute()} is unreadable: Corruption")
        for advice in ("cp -a", "Rdict.repair", "empty spool", "docs/operations.md"):
            assert advice in text

    # The repair the message names, run as it says, gives every message back.
    (command,) = re.findall(r'python -c "(.+)"', text)
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", command], check=True)
    spool = rocks_spool(tmp_path)
    await spool.start()
    assert set(await contents(spool)) == set(many)
    assert await spool.load_data(many[7]) == b"data of " + many[7].encode()
    await spool.close()
