"""Bad spool records at startup (issue 9): quarantined with a log line, the rest delivered; a
damaged SQLite database stops the start with what the operator can do, and no traceback."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool import open_spool
from kumoq.spool.sqlite import DB_NAME
from kumoq.testing import KumoqStartError
from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {
    "sender": "s@example.com",
    "recipient": "r@example.com",
    "meta": {},
    "schedule": None,
    "num_attempts": 0,
    "due": None,
}

BAD_SCHEDULE = {"dow": "Mon", "tz": "Mars/Olympus", "start": "09:00:00", "end": "17:00:00"}

# name -> the meta bytes stored for it; each is one way a record can be damaged.
BAD: dict[str, bytes] = {
    "sender-5": json.dumps({**GOOD, "sender": 5}).encode(),
    "due-infinity": json.dumps({**GOOD, "due": float("inf")}).encode(),
    "due-nan": json.dumps({**GOOD, "due": float("nan")}).encode(),
    "not-json": b"\x00\x01 this is not JSON",
    "no-recipient": json.dumps({k: v for k, v in GOOD.items() if k != "recipient"}).encode(),
    "attempts-negative": json.dumps({**GOOD, "num_attempts": -1}).encode(),
    "schedule-bad-tz": json.dumps({**GOOD, "schedule": BAD_SCHEDULE}).encode(),
}


def write_spool(workdir: Path, kind: str, items: list[tuple[str, bytes | None, bytes]]) -> None:
    """Store ``(id, data, meta)`` items in the spool the test policy uses, as kumoq would."""

    async def store() -> None:
        data, meta = (
            SpoolDefinition.from_mapping(
                {"name": n, "path": str(workdir / "var" / "spool" / n), "kind": kind}
            )
            for n in ("data", "meta")
        )
        spool = open_spool(data, meta)
        await spool.start()
        await spool.store_many(items)
        await spool.close()

    asyncio.run(store())


def body(tag: str) -> bytes:
    return f"From: <s@example.com>\r\nSubject: {tag}\r\n\r\nspooled before the start\r\n".encode()


@pytest.mark.parametrize("kind", ["LocalDisk", "SQLite"])
def test_bad_records_are_quarantined_and_the_good_ones_delivered(kumoq: Any, kind: str) -> None:
    daemon = kumoq(policy(MAILDIR_QUEUE, kind=kind), start=False)
    good = {new_spool_id(1_700_000_000.0 + i): f"good-{i}" for i in range(3)}
    bad = {new_spool_id(1_700_000_100.0 + i): name for i, name in enumerate(BAD)}
    items: list[tuple[str, bytes | None, bytes]] = [
        (i, body(tag), json.dumps({**GOOD, "recipient": f"{tag}@example.com"}).encode())
        for i, tag in good.items()
    ]
    items += [(i, body(name), BAD[name]) for i, name in bad.items()]
    write_spool(daemon.workdir, kind, items)

    daemon.start()
    delivered = daemon.wait_for_maildir_count(3)
    subjects = sorted(m["Subject"] for m in daemon.maildir_messages())
    assert subjects == sorted(good.values())
    for msg_id, name in bad.items():
        lines = [line for line in daemon.stderr_lines if msg_id in line]
        assert len(lines) == 1, (name, lines)
        assert "is unreadable" in lines[0], (name, lines[0])
        assert "moved to the spool's quarantine" in lines[0], (name, lines[0])
    assert any(
        f"3 messages re-queued, {len(BAD)} quarantined" in line for line in daemon.stderr_lines
    )
    assert not any("Traceback" in line for line in daemon.stderr_lines)
    assert daemon.stop() == 0
    assert len(daemon.maildir_files()) == len(delivered)

    # Where the operator finds them: nothing was deleted.
    if kind == "LocalDisk":
        quarantine = daemon.workdir / "var" / "spool" / "meta" / "quarantine"
        for msg_id, name in bad.items():
            assert (quarantine / msg_id).read_bytes() == BAD[name]
            assert (daemon.workdir / "var/spool/data/quarantine" / msg_id).read_bytes() == body(
                name
            )
            assert (quarantine / f"{msg_id}.reason").read_text().strip()
    else:
        with sqlite3.connect(daemon.workdir / "var" / "spool" / "data" / DB_NAME) as db:
            rows = dict(db.execute("SELECT id, meta FROM quarantine").fetchall())
            reasons = [r for (r,) in db.execute("SELECT reason FROM quarantine")]
        db.close()
        assert rows == {msg_id: BAD[name] for msg_id, name in bad.items()}
        assert any(r.startswith("sender: ") for r in reasons)

    # The next start finds a clean spool: no record is quarantined twice.
    before = len(daemon.stderr_lines)
    daemon.start()
    assert not any("unreadable" in line for line in daemon.stderr_lines[before:])
    assert any("0 messages re-queued" in line for line in daemon.stderr_lines[before:])


def test_a_damaged_sqlite_database_stops_the_start_with_advice(kumoq: Any) -> None:
    daemon = kumoq(policy(MAILDIR_QUEUE, kind="SQLite"), start=False)
    # Due in 2096, so that nothing is delivered (or removed) before the damage is found.
    meta = json.dumps({**GOOD, "due": 4_000_000_000}).encode()
    write_spool(
        daemon.workdir,
        "SQLite",
        [(new_spool_id(1_700_000_000.0 + i), body(f"m{i}"), meta) for i in range(300)],
    )
    db = daemon.workdir / "var" / "spool" / "data" / DB_NAME
    size = db.stat().st_size
    with db.open("r+b") as f:  # 4 KB of garbage over a page in the middle of the file
        f.seek(size // 2 // 4096 * 4096)
        f.write(random.Random(9).randbytes(4096))

    with pytest.raises(KumoqStartError):
        daemon.start()
    assert daemon.stop() == 1
    stderr = "\n".join(daemon.stderr_lines)
    assert "Traceback" not in stderr
    assert f"spool database {db} is unreadable: database disk image is malformed" in stderr
    assert "sqlite3 spool.sqlite3 .recover | sqlite3 recovered.sqlite3" in stderr
    assert "empty spool" in stderr
    assert "initialization complete" not in stderr
