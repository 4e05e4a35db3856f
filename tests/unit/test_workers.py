"""kumoq.workers: a worker's identity from the environment, its spool directory, the
directories it adopts, and the registry; kumoq.spool.SpoolSet: adopted spools behind a
worker's own (real LocalDisk and RocksDB spools in a temporary directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool import SpoolSet, open_worker_spool, worker_spool_pair
from kumoq.workers import Peer, WorkerSlot, adopted_paths, spool_path

NOW = 1_700_000_000.0


def slot(index: int, count: int, registry: Path | None = None) -> WorkerSlot:
    return WorkerSlot(index=index, count=count, registry=registry, token="t")


def test_alone_without_the_variables() -> None:
    assert WorkerSlot.from_env({}) is None


def test_the_slot_from_the_environment(tmp_path: Path) -> None:
    env = {
        "KUMOQ_WORKER_INDEX": "1",
        "KUMOQ_WORKERS": "3",
        "KUMOQ_WORKERS_DIR": str(tmp_path),
        "KUMOQ_WORKERS_TOKEN": "secret",
    }
    assert WorkerSlot.from_env(env) == WorkerSlot(1, 3, tmp_path, "secret")


@pytest.mark.parametrize(
    ("index", "count", "message"),
    [("x", "2", "must both be integers"), ("2", "2", "not in 0..1"), ("0", "0", "not in 0..-1"),
     (None, "2", "must both be integers")],
)  # fmt: skip
def test_inconsistent_variables_are_named(index: str | None, count: str, message: str) -> None:
    env = {"KUMOQ_WORKERS": count}
    if index is not None:
        env["KUMOQ_WORKER_INDEX"] = index
    with pytest.raises(ValueError, match=message):
        WorkerSlot.from_env(env)


def test_worker_zero_keeps_the_configured_path() -> None:
    assert spool_path("/var/spool/kumo/data", None) == "/var/spool/kumo/data"
    assert spool_path("/var/spool/kumo/data", slot(0, 2)) == "/var/spool/kumo/data"
    assert spool_path("/var/spool/kumo/data", slot(3, 4)) == "/var/spool/kumo/data/worker-3"


def test_adopted_directories_are_those_of_missing_workers() -> None:
    found = ["data", "lock", "worker-1", "worker-2", "worker-3", "worker-05", "worker-x", "new"]
    assert adopted_paths("/s", None, found) == ["/s/worker-1", "/s/worker-2", "/s/worker-3"]
    assert adopted_paths("/s", slot(0, 2), found) == ["/s/worker-2"]
    assert adopted_paths("/s", slot(1, 2), found) == ["/s/worker-3"]
    assert adopted_paths("/s", slot(1, 4), found) == []  # every worker-j still runs


def test_registry_lists_the_other_workers(tmp_path: Path) -> None:
    first, second, third = slot(0, 3, tmp_path), slot(1, 3, tmp_path), slot(2, 3, tmp_path)
    first.register("http://127.0.0.1:1000")
    second.register("http://127.0.0.1:2000")
    (tmp_path / "worker-2.json").write_text("{not json")  # half-written by hand: skipped
    assert third.peers() == [
        Peer(0, os.getpid(), "http://127.0.0.1:1000"),
        Peer(1, os.getpid(), "http://127.0.0.1:2000"),
    ]
    assert [p.index for p in first.peers()] == [1]
    second.unregister()
    assert third.peers() == [Peer(0, os.getpid(), "http://127.0.0.1:1000")]
    first.mark_ready()
    assert (tmp_path / "ready-0").exists()


def pair(root: Path, kind: str) -> tuple[SpoolDefinition, SpoolDefinition]:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(root / n), "kind": kind})
        for n in ("data", "meta")
    )
    return data, meta


@pytest.mark.parametrize("kind", ["LocalDisk", "RocksDB"])
async def test_a_spool_set_serves_adopted_messages_where_they_are(
    tmp_path: Path, kind: str
) -> None:
    data, meta = pair(tmp_path, kind)
    # Worker 1 of 2 spools two messages, then the box restarts with one process.
    second = open_worker_spool(data, meta, slot(1, 2), [])
    assert worker_spool_pair(data, meta, slot(1, 2))[0].path == str(tmp_path / "data/worker-1")
    await second.start()
    old_a, old_b = new_spool_id(NOW), new_spool_id(NOW)
    await second.store(old_a, b"data a", b'{"m": "a"}')
    await second.store(old_b, b"data b", b'{"m": "b"}')
    await second.close()

    found = os.listdir(data.path)
    alone = open_worker_spool(data, meta, None, found)
    assert isinstance(alone, SpoolSet)
    await alone.start()
    try:
        new = new_spool_id(NOW)
        await alone.store(new, b"data new", b'{"m": "new"}')
        seen = {msg_id: meta_bytes async for msg_id, meta_bytes in alone.enumerate()}
        assert seen == {new: b'{"m": "new"}', old_a: b'{"m": "a"}', old_b: b'{"m": "b"}'}
        assert alone.adopted_count == 2
        assert await alone.load_data(old_a) == b"data a"
        await alone.store(old_a, None, b'{"m": "a2"}')  # a meta update stays where it is
        await alone.remove(old_b)
        assert alone.adopted_count == 1
    finally:
        await alone.close()

    # Nothing moved: worker 1's spool holds what is left of its own messages, updated.
    second = open_worker_spool(data, meta, slot(1, 2), [])
    await second.start()
    try:
        left = {msg_id: meta_bytes async for msg_id, meta_bytes in second.enumerate()}
        assert left == {old_a: b'{"m": "a2"}'}
    finally:
        await second.close()
    primary = open_worker_spool(data, meta, slot(0, 2), [])
    await primary.start()
    try:
        assert [msg_id async for msg_id, _ in primary.enumerate()] == [new]
    finally:
        await primary.close()
