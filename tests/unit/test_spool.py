"""The spool contract, for every kind (LocalDisk, SQLite, RocksDB): storing.

One parametrized suite with tests/unit/test_spool_recovery.py (failures, restarts, corrupt
entries, the quarantine, SIGKILL): every test taking ``make`` runs once per variant of
tests/unit/spool_support.py. Here: store, load, remove, enumerate, group commit, durability
order, the lock, the lifecycle, no blocking call on the loop. What is particular to one kind
(its files, its locks) follows the suite; more on RocksDB in tests/unit/test_spool_rocks.py.
Real files under ``tmp_path``; the only stand-ins are the sync calls some tests slow down.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from kumoq.config.spool import SpoolDefinition
from kumoq.errors import ConfigError, SpoolCorruptError, SpoolError, SpoolLockedError
from kumoq.spool import LocalDiskSpool, RocksSpool, SqliteSpool, open_spool
from kumoq.spool.base import REMOVE, STORE, Op, fold_ops
from kumoq.spool.health import check_free_space
from kumoq.spool.rocks import DB_DIR
from kumoq.spool.sqlite import DB_NAME
from tests.unit.spool_support import VARIANTS, Factory, contents, ids, make, meta_for, variant

__all__ = ["make", "variant"]  # the fixtures


async def test_store_load_remove_enumerate(make: Factory) -> None:
    spool = make()
    await spool.start()
    a, b, c = ids(3)
    for i in (a, b, c):
        await spool.store(i, b"data of " + i.encode(), meta_for(i))
    assert await contents(spool) == {i: meta_for(i) for i in (a, b, c)}
    assert await spool.load_data(b) == b"data of " + b.encode()
    syncs = spool.stats.syncs
    await spool.remove(b)
    assert spool.stats.syncs == syncs  # removes are not synced
    assert await contents(spool) == {a: meta_for(a), c: meta_for(c)}
    with pytest.raises(SpoolCorruptError, match=b):
        await spool.load_data(b)
    await spool.remove(b)  # removing again is harmless
    await spool.close()


async def test_meta_only_update_keeps_data(make: Factory) -> None:
    spool = make()
    await spool.start()
    (a, b) = ids(2)
    await spool.store(a, b"payload", meta_for(a, 0))
    await spool.store(a, None, meta_for(a, 3))
    assert await spool.load_data(a) == b"payload"
    # meta without data: enumerated, but its data is missing (the caller treats it as corrupt)
    await spool.store(b, None, meta_for(b))
    assert await contents(spool) == {a: meta_for(a, 3), b: meta_for(b)}
    with pytest.raises(SpoolCorruptError):
        await spool.load_data(b)
    await spool.close()


async def test_survives_reopen(make: Factory) -> None:
    spool = make()
    await spool.start()
    (a,) = ids(1)
    await spool.store(a, b"kept", meta_for(a))
    await spool.close()
    again = make()
    await again.start()
    assert await contents(again) == {a: meta_for(a)}
    assert await again.load_data(a) == b"kept"
    await again.close()


async def test_concurrent_stores_share_commits(make: Factory, variant: str) -> None:
    spool = make()
    await spool.start()
    many = ids(200)
    await asyncio.gather(*(spool.store(i, b"x" * 2048, meta_for(i)) for i in many))
    assert spool.stats.ops == 200
    assert spool.stats.stores == 200
    assert spool.stats.batches < 20, spool.stats
    assert spool.stats.max_batch > 10
    if VARIANTS[variant][3] != "fdatasync":  # fdatasync mode syncs each file (concurrently)
        assert spool.stats.syncs <= 2 * spool.stats.batches
    assert set(await contents(spool)) == set(many)
    await spool.close()


async def test_store_returns_only_after_the_sync(make: Factory, variant: str) -> None:
    """Block the sync call itself: the store must still be pending, and nothing published."""
    spool = make()
    await spool.start()
    attr = VARIANTS[variant][3]
    real = getattr(spool, attr)
    entered, release = threading.Event(), threading.Event()
    synced: list[bool] = []

    def slow_sync(*args: object) -> None:
        entered.set()
        assert release.wait(10)
        real(*args)
        synced.append(True)

    setattr(spool, attr, slow_sync)
    (a,) = ids(1)
    task = asyncio.create_task(spool.store(a, b"data", meta_for(a)))
    assert await asyncio.to_thread(entered.wait, 10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    assert not synced
    if isinstance(spool, LocalDiskSpool):  # still a temp file: not renamed into place
        assert await asyncio.to_thread(os.listdir, spool._meta.data_dir) == []
    release.set()
    await task
    assert synced
    await spool.close()


async def test_store_then_remove_in_one_batch(make: Factory) -> None:
    spool = make()
    await spool.start()
    a, b = ids(2)
    await spool.store(b, b"old", meta_for(b, 0))
    await asyncio.gather(
        spool.store(a, b"gone", meta_for(a)),
        spool.remove(a),
        spool.remove(b),
        spool.store(b, b"new", meta_for(b, 1)),
    )
    assert await contents(spool) == {b: meta_for(b, 1)}
    assert await spool.load_data(b) == b"new"
    await spool.close()


async def test_store_many_and_paged_enumeration(make: Factory) -> None:
    spool = make()
    await spool.start()
    many = ids(1234)
    await spool.store_many([(i, i.encode(), meta_for(i)) for i in many])
    await spool.store_many([])
    assert spool.stats.batches == 1
    found = await contents(spool)
    assert found == {i: meta_for(i) for i in many}
    await spool.close()


async def test_second_opener_is_locked_out(make: Factory) -> None:
    first = make()
    await first.start()
    second = make()
    with pytest.raises(SpoolLockedError, match=rf"is locked by pid {os.getpid()}"):
        await second.start()
    await first.close()
    await second.start()  # released on close
    await second.close()


async def test_bad_ids_and_lifecycle_errors(make: Factory) -> None:
    spool = make()
    with pytest.raises(SpoolError, match="not started"):
        await spool.store(ids(1)[0], b"x", b"{}")
    await spool.start()
    with pytest.raises(SpoolError, match="already started"):
        await spool.start()
    for bad in ("../../etc/passwd", "ABCDEF" * 6 + "00", "0" * 31):
        with pytest.raises(SpoolError, match="not a spool id"):
            await spool.store(bad, b"x", b"{}")
        with pytest.raises(SpoolError, match="not a spool id"):
            await spool.load_data(bad)
    await spool.close()
    await spool.close()  # idempotent
    with pytest.raises(SpoolError):
        await spool.store(ids(1)[0], b"x", b"{}")


async def test_no_blocking_call_on_the_event_loop(make: Factory) -> None:
    many = ids(50)
    with blockbuster_ctx():
        spool = make()
        await spool.start()
        await asyncio.gather(*(spool.store(i, b"x" * 2048, meta_for(i)) for i in many))
        await spool.store(many[0], None, meta_for(many[0], 1))
        assert await spool.load_data(many[1]) == b"x" * 2048
        assert len(await contents(spool)) == 50
        await asyncio.gather(*(spool.remove(i) for i in many))
        assert await contents(spool) == {}
        await spool.close()


async def test_flush_false_makes_no_syncs(make: Factory) -> None:
    spool = make(flush=False)
    await spool.start()
    await asyncio.gather(*(spool.store(i, b"x", meta_for(i)) for i in ids(20)))
    assert spool.stats.syncs == 0
    await spool.close()


async def test_localdisk_layout_recovery_and_pruning(tmp_path: Path) -> None:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(tmp_path / n)})
        for n in ("data", "meta")
    )
    (tmp_path / "data" / "new").mkdir(parents=True)
    leftover = tmp_path / "data" / "new" / "0123"
    leftover.write_bytes(b"half a message")
    spool = open_spool(data, meta)
    assert isinstance(spool, LocalDiskSpool)
    await spool.start()
    assert not leftover.exists()
    assert (tmp_path / "data" / "lock").read_text().strip() == str(os.getpid())
    assert (tmp_path / "meta" / "lock").exists()
    msg_id = "0123abcd" + "e" * 24
    await spool.store(msg_id, b"DATA", b"META")
    # KumoMTA's layout: <path>/data/a1/a2/a3/a4/<24 hex>
    rel = Path("data", "01", "23", "ab", "cd", "e" * 24)
    assert (tmp_path / "data" / rel).read_bytes() == b"DATA"
    assert (tmp_path / "meta" / rel).read_bytes() == b"META"
    (tmp_path / "meta" / "data" / "README").write_text("not a spool entry")
    (tmp_path / "meta" / "data" / "ff" / "00").mkdir(parents=True)  # left empty by a crash
    assert await contents(spool) == {msg_id: b"META"}
    assert not (tmp_path / "meta" / "data" / "ff" / "00").exists()  # pruned by enumeration
    await spool.remove(msg_id)
    assert os.listdir(tmp_path / "data" / "data") == []  # emptied directories are pruned
    assert sorted(os.listdir(tmp_path / "meta" / "data")) == ["README", "ff"]
    await spool.close()


async def test_sqlite_location_and_locks(tmp_path: Path) -> None:
    data, meta = (
        SpoolDefinition.from_mapping(
            {"name": n, "path": str(tmp_path / n), "kind": "SQLite", "flush": n == "meta"}
        )
        for n in ("data", "meta")
    )
    spool = open_spool(data, meta)
    assert isinstance(spool, SqliteSpool)
    assert spool.flush  # either definition asking for flush wins
    await spool.start()
    assert (tmp_path / "data" / DB_NAME).exists()
    assert (tmp_path / "meta" / "lock").exists()
    other = open_spool(
        SpoolDefinition.from_mapping(
            {"name": "data", "path": str(tmp_path / "x"), "kind": "SQLite"}
        ),
        meta,
    )
    with pytest.raises(SpoolLockedError, match="meta is locked"):
        await other.start()
    await spool.close()


async def test_rocksdb_location_and_locks(tmp_path: Path) -> None:
    data, meta = (
        SpoolDefinition.from_mapping(
            {"name": n, "path": str(tmp_path / n), "kind": "RocksDB", "flush": n == "meta"}
        )
        for n in ("data", "meta")
    )
    spool = open_spool(data, meta)
    assert isinstance(spool, RocksSpool)
    assert spool.flush  # either definition asking for flush wins
    await spool.start()
    assert (tmp_path / "data" / DB_DIR / "CURRENT").exists()  # one database, in the data path
    assert sorted(os.listdir(tmp_path / "data")) == ["lock", DB_DIR]
    assert os.listdir(tmp_path / "meta") == ["lock"]  # the meta path only holds its lock
    other = open_spool(
        SpoolDefinition.from_mapping(
            {"name": "data", "path": str(tmp_path / "x"), "kind": "RocksDB"}
        ),
        meta,
    )
    with pytest.raises(SpoolLockedError, match="meta is locked"):
        await other.start()
    assert not (tmp_path / "x" / DB_DIR).exists()  # locked out before opening anything
    await spool.close()
    shared = open_spool(  # both definitions on one path: one lock, one database
        *(
            SpoolDefinition.from_mapping(
                {"name": n, "path": str(tmp_path / "one"), "kind": "RocksDB"}
            )
            for n in ("data", "meta")
        )
    )
    await shared.start()
    (msg_id,) = ids(1)
    await shared.store(msg_id, b"d", b"m")
    assert await contents(shared) == {msg_id: b"m"}
    await shared.close()
    assert sorted(os.listdir(tmp_path / "one")) == ["lock", DB_DIR]


def test_open_spool_rejects_bad_pairs(tmp_path: Path) -> None:
    local = SpoolDefinition.from_mapping({"name": "data", "path": str(tmp_path)})
    sqlite = SpoolDefinition.from_mapping({"name": "meta", "path": str(tmp_path), "kind": "SQLite"})
    with pytest.raises(ConfigError, match="same kind"):
        open_spool(local, sqlite)
    with pytest.raises(ConfigError, match="both use path"):
        open_spool(local, local)


@pytest.mark.parametrize(
    ("ops", "removes", "stores"),
    [
        ([(STORE, "a", b"d", b"m")], [], [("a", b"d", b"m")]),
        ([(STORE, "a", b"d", b"m1"), (STORE, "a", None, b"m2")], [], [("a", b"d", b"m2")]),
        ([(STORE, "a", b"d", b"m"), (REMOVE, "a", None, None)], ["a"], []),
        ([(REMOVE, "a", None, None), (STORE, "a", None, b"m")], ["a"], [("a", None, b"m")]),
        ([(REMOVE, "a", None, None), (STORE, "b", b"d", b"m")], ["a"], [("b", b"d", b"m")]),
    ],
)
def test_fold_ops(
    ops: list[Op], removes: list[str], stores: list[tuple[str, bytes | None, bytes]]
) -> None:
    folded = fold_ops(ops)
    assert folded.removes == removes
    assert folded.stores == stores


async def test_free_space_floors(tmp_path: Path) -> None:
    def define(**floors: object) -> SpoolDefinition:
        return SpoolDefinition.from_mapping(
            {"name": "data", "path": str(tmp_path / "not" / "yet"), **floors}
        )

    assert await check_free_space(define(min_free_space="0%", min_free_inodes="0%")) is None
    problem = await check_free_space(define(), define(min_free_space="100%"))
    assert problem is not None
    assert problem.startswith("storage is too full")
    assert "min_free_space=100%" in problem
    inodes = await check_free_space(define(min_free_inodes="100%"))
    if os.statvfs(tmp_path).f_files:  # some filesystems report no inode count
        assert inodes is not None
        assert "min_free_inodes=100%" in inodes
    huge = await check_free_space(define(min_free_space=2**62))
    assert huge is not None
