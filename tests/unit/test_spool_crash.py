"""Crash consistency: SIGKILL a process that is storing; every acknowledged message survives.

The child stores messages from 8 concurrent tasks with ``flush=true`` and prints each id only
after ``store`` returned (the point where reception would answer 250). We kill it mid-stream,
reopen the spool and check that every printed id is enumerated with intact data and meta,
that the lock of the dead process does not block the restart, and that no temp file is left.
(SIGKILL keeps the page cache, so this checks ordering and recovery, not power loss.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kumoq.config.spool import SpoolDefinition
from kumoq.spool import open_spool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


def _define(root: Path, name: str, kind: str) -> SpoolDefinition:
    return SpoolDefinition.from_mapping({"name": name, "path": str(root / name), "kind": kind})


async def _reopen(root: Path, kind: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    spool = open_spool(_define(root, "data", kind), _define(root, "meta", kind))
    await spool.start()
    try:
        metas = {msg_id: meta async for msg_id, meta in spool.enumerate()}
        datas = {msg_id: await spool.load_data(msg_id) for msg_id in metas}
    finally:
        await spool.close()
    return metas, datas


@pytest.mark.parametrize("kind", ["LocalDisk", "SQLite"])
def test_acknowledged_messages_survive_sigkill(tmp_path: Path, kind: str) -> None:
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

    metas, datas = asyncio.run(_reopen(tmp_path, kind))

    missing = [msg_id for msg_id in acked if msg_id not in metas]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    for msg_id in acked:
        assert metas[msg_id] == b'{"id":"%s"}' % msg_id.encode()
        assert datas[msg_id] == (msg_id * 64).encode()
    if kind == "LocalDisk":
        assert os.listdir(tmp_path / "data" / "new") == []
        assert os.listdir(tmp_path / "meta" / "new") == []
