"""The spool contract, for every kind (LocalDisk, SQLite, RocksDB): failures and recovery.

One parametrized suite with tests/unit/test_spool.py (storing): every test taking ``make`` runs
once per variant of tests/unit/spool_support.py. Here: a failed batch, a restart between steps
(the crash between steps, simulated by reopening), missing and empty data, the quarantine of
corrupt entries, and a real crash: SIGKILL in the middle of a stream of stores (integration).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kumoq.errors import SpoolCorruptError, SpoolError, SpoolRecordError
from kumoq.spool import LocalDiskSpool, open_spool
from kumoq.spool_record import message_from_spool_bytes
from tests.unit.spool_support import (
    KINDS,
    VARIANTS,
    Factory,
    contents,
    definitions,
    ids,
    make,
    meta_for,
    quarantined,
    reason_of,
    restart,
    variant,
)

__all__ = ["make", "variant"]  # the fixtures


async def test_failed_sync_fails_the_whole_batch_then_recovers(make: Factory, variant: str) -> None:
    spool = make()
    await spool.start()
    attr = VARIANTS[variant][3]
    real = getattr(spool, attr)

    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    setattr(spool, attr, broken)
    a, b = ids(2)
    results = await asyncio.gather(
        spool.store(a, b"1", meta_for(a)), spool.store(b, b"2", meta_for(b)), return_exceptions=True
    )
    assert all(isinstance(r, SpoolError) for r in results), results
    assert spool.stats.errors >= 1
    setattr(spool, attr, real)
    await spool.store(a, b"1", meta_for(a))
    assert await spool.load_data(a) == b"1"
    if isinstance(spool, LocalDiskSpool):  # no temp file left behind by the failed batch
        assert os.listdir(spool._data.new_dir) == []
        assert os.listdir(spool._meta.new_dir) == []
    spool = await restart(spool, make)  # nothing of the failed batch comes back
    assert await contents(spool) == {a: meta_for(a)}
    await spool.close()


async def test_each_step_survives_a_restart(make: Factory) -> None:
    """A restart (the spool closed and opened again) between any two steps finds what the
    last finished step left: the crash between steps, without the crash. The SIGKILL test
    below is the crash itself."""
    a, b, c = ids(3)
    spool = make()
    await spool.start()
    await spool.store_many([(a, b"A", meta_for(a)), (b, b"B", meta_for(b))])
    spool = await restart(spool, make)
    assert await contents(spool) == {a: meta_for(a), b: meta_for(b)}
    assert await spool.load_data(a) == b"A"
    await spool.store(a, None, meta_for(a, 1))  # a meta-only update (a retry's new due time)
    spool = await restart(spool, make)
    assert await contents(spool) == {a: meta_for(a, 1), b: meta_for(b)}
    assert await spool.load_data(a) == b"A"
    await spool.remove(a)
    await spool.store(c, (b"C", b"-pieces"), meta_for(c))  # data in pieces, written whole
    spool = await restart(spool, make)
    assert await contents(spool) == {b: meta_for(b), c: meta_for(c)}
    assert await spool.load_data(c) == b"C-pieces"
    with pytest.raises(SpoolCorruptError):
        await spool.load_data(a)
    await spool.quarantine(b, "why")
    spool = await restart(spool, make)
    assert await contents(spool) == {c: meta_for(c)}
    await spool.close()


async def test_missing_or_empty_data_is_corrupt(make: Factory) -> None:
    """Corrupt entries: a meta whose data is missing, or empty, is not an empty message."""
    spool = make()
    await spool.start()
    empty, missing = ids(2)
    await spool.store(empty, b"", meta_for(empty))
    await spool.store(missing, None, meta_for(missing))
    with pytest.raises(SpoolCorruptError, match="empty"):
        await spool.load_data(empty)
    with pytest.raises(SpoolCorruptError, match="no data"):
        await spool.load_data(missing)
    await spool.close()


async def test_quarantine_takes_a_record_out_of_the_spool(
    make: Factory, variant: str, tmp_path: Path
) -> None:
    spool = make()
    await spool.start()
    good, bad, meta_only = ids(3)
    await spool.store_many([(good, b"good data", b"{}"), (bad, b"bad data", b'{"sender": 5}')])
    await spool.store(meta_only, None, b"not json")  # a meta whose data is missing
    await spool.quarantine(bad, "sender: expected an address string, got int 5")
    await spool.quarantine(meta_only, "json: not a JSON text")
    assert await contents(spool) == {good: b"{}"}
    with pytest.raises(SpoolCorruptError):
        await spool.load_data(bad)
    assert await spool.load_data(good) == b"good data"
    assert spool.stats.quarantines == 2
    spool = await restart(spool, make)  # still out after a restart; the good one untouched
    assert await contents(spool) == {good: b"{}"}
    assert await spool.load_data(good) == b"good data"
    await spool.close()

    q = quarantined(tmp_path, VARIANTS[variant][0])
    assert sorted(q) == sorted([bad, meta_only])
    assert q[bad][:2] == (b'{"sender": 5}', b"bad data")
    assert reason_of(q[bad]) == "sender: expected an address string, got int 5"
    assert q[meta_only][:2] == (b"not json", None)
    assert reason_of(q[meta_only]) == "json: not a JSON text"


async def test_a_second_quarantine_of_an_id_keeps_the_first(
    make: Factory, variant: str, tmp_path: Path
) -> None:
    spool = make()
    await spool.start()
    (msg_id,) = ids(1)
    for n in (1, 2):
        await spool.store(msg_id, b"data %d" % n, b"meta %d" % n)
        await spool.quarantine(msg_id, f"reason {n}")
    await spool.quarantine(msg_id, "nothing left to move")  # a no-op, not an error
    assert await contents(spool) == {}
    await spool.close()
    q = quarantined(tmp_path, VARIANTS[variant][0])
    assert sorted(q) == [msg_id, f"{msg_id}.1"]
    assert q[msg_id][:2] == (b"meta 1", b"data 1")
    assert reason_of(q[msg_id]) == "reason 1"
    assert q[f"{msg_id}.1"][:2] == (b"meta 2", b"data 2")
    assert reason_of(q[f"{msg_id}.1"]) == "reason 2"


async def test_a_failed_quarantine_raises_and_leaves_the_record(
    make: Factory, variant: str, tmp_path: Path
) -> None:
    spool = make()
    await spool.start()
    (msg_id,) = ids(1)
    await spool.store(msg_id, b"data", b"meta")
    if isinstance(spool, LocalDiskSpool):  # the move itself fails
        (tmp_path / "meta" / "quarantine").write_text("a file where the directory should be")
    else:  # the transaction or WriteBatch that moves it fails

        def broken(*args: object) -> None:
            raise OSError(5, "Input/output error")

        setattr(spool, VARIANTS[variant][3], broken)
    with pytest.raises(SpoolError):
        await spool.quarantine(msg_id, "why")
    assert await contents(spool) == {msg_id: b"meta"}
    assert await spool.load_data(msg_id) == b"data"
    await spool.close()


async def test_a_record_that_cannot_be_read_is_quarantined_at_enumeration(make: Factory) -> None:
    """Corrupt entries end in the quarantine: what the daemon does with a meta record that
    does not validate (tests/unit/test_spool_quarantine.py runs the daemon's enumeration)."""
    spool = make()
    await spool.start()
    good, bad = ids(2)
    record = b'{"sender": "s@example.com", "recipient": "r@example.com", "meta": {}}'
    await spool.store_many([(good, b"data", record), (bad, b"data", b"{not json")])
    found = []
    async for msg_id, meta in spool.enumerate():
        try:
            message_from_spool_bytes(msg_id, meta)
        except SpoolRecordError as exc:
            await spool.quarantine(msg_id, str(exc))
            continue
        found.append(msg_id)
    assert found == [good]
    spool = await restart(spool, make)
    assert list(await contents(spool)) == [good]
    await spool.close()


CHILD = r"""
import asyncio, sys, time
from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool import open_spool

root, kind = sys.argv[1], sys.argv[2]

def define(name):
    return SpoolDefinition.from_mapping(
        {"name": name, "path": f"{root}/{name}", "kind": kind, "flush": True}
    )

async def main():
    spool = open_spool(define("data"), define("meta"))
    await spool.start()

    async def worker():
        while True:
            msg_id = new_spool_id(time.time())
            await spool.store(msg_id, (msg_id * 64).encode(), b'{"id":"%s"}' % msg_id.encode())
            sys.stdout.write(msg_id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker() for _ in range(8)))

asyncio.run(main())
"""

KILL_AFTER = 300


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_acknowledged_messages_survive_sigkill(tmp_path: Path, kind: str) -> None:
    """SIGKILL a process that is storing from 8 concurrent tasks with ``flush=true``; it
    prints each id only after ``store`` returned (where reception answers 250). Every printed
    id is enumerated after a restart, with intact data and meta; the dead process's lock does
    not block the restart; no temp file is left. (SIGKILL keeps the page cache, so this checks
    ordering and recovery, not power loss.)"""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged.append(line)
            if len(acknowledged) >= KILL_AFTER:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    acknowledged.extend(out.splitlines(keepends=True))
    acked = [line.strip() for line in acknowledged if line.endswith("\n")]
    assert len(acked) >= KILL_AFTER, err

    async def reopen() -> tuple[dict[str, bytes], dict[str, bytes]]:
        spool = open_spool(*definitions(tmp_path, kind))
        await spool.start()
        try:
            metas = await contents(spool)
            datas = {msg_id: await spool.load_data(msg_id) for msg_id in metas}
        finally:
            await spool.close()
        return metas, datas

    metas, datas = asyncio.run(reopen())
    missing = [msg_id for msg_id in acked if msg_id not in metas]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    for msg_id in acked:
        assert metas[msg_id] == b'{"id":"%s"}' % msg_id.encode()
        assert datas[msg_id] == (msg_id * 64).encode()
    if kind == "LocalDisk":
        assert os.listdir(tmp_path / "data" / "new") == []
        assert os.listdir(tmp_path / "meta" / "new") == []
