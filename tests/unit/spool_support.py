"""The spool contract's shared half: the variants every contract test runs for, and helpers.

``make`` (with ``variant``) is the fixture of the parametrized contract suite,
tests/unit/test_spool.py (storing) and tests/unit/test_spool_recovery.py (failures, restarts,
corrupt entries, the quarantine, SIGKILL): each test taking it runs once per variant, that is
for every kind (LocalDisk, SQLite, RocksDB) and LocalDisk in both its sync modes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool import LocalDiskSpool, RocksSpool, SqliteSpool, open_spool
from kumoq.spool.base import Spool
from kumoq.spool.local_disk import SyncMode
from kumoq.spool.rocks import DB_DIR, QUARANTINE
from kumoq.spool.sqlite import DB_NAME

NOW = 1_700_000_000.0

KINDS = ["LocalDisk", "SQLite", "RocksDB"]

# (kind, LocalDisk sync_mode, io_threads, the attribute that performs the disk sync)
VARIANTS: dict[str, tuple[str, SyncMode, int, str]] = {
    "localdisk-syncfs": ("LocalDisk", "syncfs", 0, "syncfs"),
    "localdisk-fdatasync-threads": ("LocalDisk", "fdatasync", 4, "fdatasync"),
    "sqlite": ("SQLite", "syncfs", 0, "commit"),  # sync_mode unused
    "rocksdb": ("RocksDB", "syncfs", 0, "write"),  # the synced WriteBatch write
}

AnySpool = LocalDiskSpool | SqliteSpool | RocksSpool
Factory = Callable[..., AnySpool]


def definitions(
    root: Path, kind: str, *, flush: bool = True
) -> tuple[SpoolDefinition, SpoolDefinition]:
    data, meta = (
        SpoolDefinition.from_mapping(
            {"name": n, "path": str(root / n), "kind": kind, "flush": flush}
        )
        for n in ("data", "meta")
    )
    return data, meta


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(variant: str, tmp_path: Path) -> Factory:
    kind, mode, threads, _attr = VARIANTS[variant]

    def factory(root: Path = tmp_path, *, flush: bool = True) -> AnySpool:
        data, meta = definitions(root, kind, flush=flush)
        if kind == "LocalDisk":
            return LocalDiskSpool(data, meta, sync_mode=mode, io_threads=threads)
        spool = open_spool(data, meta)
        assert isinstance(spool, SqliteSpool | RocksSpool)
        return spool

    return factory


def ids(n: int) -> list[str]:
    return [new_spool_id(NOW) for _ in range(n)]


def meta_for(msg_id: str, n: int = 0) -> bytes:
    return b'{"id":"%s","n":%d}' % (msg_id.encode(), n)


async def contents(spool: Spool) -> dict[str, bytes]:
    return {msg_id: meta async for msg_id, meta in spool.enumerate()}


async def restart(spool: AnySpool, make: Factory) -> AnySpool:
    """Close ``spool`` and open the same directories again: what a restart sees."""
    await spool.close()
    again = make()
    await again.start()
    return again


def quarantined(root: Path, kind: str) -> dict[str, tuple[bytes | None, bytes | None, str]]:
    """The quarantine of the (closed) spool under ``root``, read from its storage:
    ``{name: (meta, data, "<UTC time> <reason>")}``; a name is the id, then ``<id>.1``..."""
    out: dict[str, tuple[bytes | None, bytes | None, str]] = {}
    if kind == "LocalDisk":
        meta_q, data_q = root / "meta" / "quarantine", root / "data" / "quarantine"
        for reason in meta_q.glob("*.reason"):
            name = reason.name.removesuffix(".reason")
            meta, data = meta_q / name, data_q / name
            out[name] = (
                meta.read_bytes() if meta.exists() else None,
                data.read_bytes() if data.exists() else None,
                reason.read_text().strip(),
            )
    elif kind == "SQLite":
        db = sqlite3.connect(root / "data" / DB_NAME)
        try:
            rows = db.execute(
                "SELECT id, meta, data, reason, quarantined_at FROM quarantine ORDER BY rowid"
            ).fetchall()
        finally:
            db.close()
        for msg_id, meta, data, reason, at in rows:
            n = sum(1 for name in out if name.split(".")[0] == msg_id)
            out[f"{msg_id}.{n}" if n else msg_id] = (meta, data, f"{at} {reason}")
    else:
        rdb = Rdict(str(root / "data" / DB_DIR), Options(raw_mode=True))
        try:
            parts = {
                k[1:].decode(): bytes(v)
                for k, v in rdb.items(from_key=QUARANTINE)
                if isinstance(k, bytes) and k.startswith(QUARANTINE)
            }
        finally:
            rdb.close()
        for key in parts:
            name, part = key.rsplit("/", 1)
            if part == "reason":
                out[name] = (
                    parts.get(f"{name}/meta"),
                    parts.get(f"{name}/data"),
                    parts[key].decode(),
                )
    return out


def reason_of(entry: tuple[bytes | None, bytes | None, str]) -> str:
    stamp, _, reason = entry[2].partition(" ")
    assert stamp.startswith("20")
    assert stamp.endswith("Z")
    return reason
