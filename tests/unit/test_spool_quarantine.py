"""Bad spool records: validation of a meta record, and the spools' quarantine (issue 9).

``message_from_spool_bytes`` must name the bad field of every damaged record with a
``SpoolRecordError``; the daemon's enumeration must quarantine such records, for every kind,
and queue the others; a damaged SQLite database must be reported with what the operator can
do. What ``quarantine`` itself does, for every kind, is in the spool contract
(tests/unit/test_spool.py); the damaged RocksDB database in tests/unit/test_spool_rocks.py.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from kumoq.config.spool import SpoolDefinition
from kumoq.daemon import Daemon
from kumoq.errors import SpoolCorruptError, SpoolError, SpoolRecordError
from kumoq.message import EnvelopeAddress, Message, new_spool_id, spool_id_created
from kumoq.metrics import REGISTRY
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import LocalDiskSpool, SqliteSpool, open_spool
from kumoq.spool.base import QUARANTINE, REMOVE, STORE, Spool, fold_ops
from kumoq.spool.sqlite import DB_NAME
from kumoq.spool_record import message_from_spool_bytes, message_from_spool_meta, spooled_message

NOW = 1_700_000_000.0
GOOD: dict[str, Any] = {
    "sender": "s@example.com",
    "recipient": "r@example.com",
    "meta": {"tenant": "acme"},
    "schedule": None,
    "num_attempts": 2,
    "due": NOW + 60,
}


def record(**changes: Any) -> bytes:
    """GOOD with ``changes`` (a value of ``...`` drops the key), as the spool stores it."""
    rec = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}
    return json.dumps(rec).encode()  # allow_nan: Infinity and NaN are written as such


BAD_RECORDS: dict[str, tuple[bytes, str]] = {
    "sender-5": (record(sender=5), "sender"),
    "sender-missing": (record(sender=...), "sender"),
    "sender-no-domain": (record(sender="nobody"), "sender"),
    "recipient-missing": (record(recipient=...), "recipient"),
    "recipient-empty-list": (record(recipient=[]), "recipient"),
    "recipient-number-in-list": (record(recipient=["a@example.com", 7]), "recipient"),
    "recipient-null-address": (record(recipient="<>"), "recipient"),
    # Infinity and NaN are not JSON (RFC 8259): the whole record is refused as such.
    "due-infinity": (record(due=float("inf")), "json"),
    "due-minus-infinity": (record(due=float("-inf")), "json"),
    "due-nan": (record(due=float("nan")), "json"),
    "due-string": (record(due="soon"), "due"),
    "due-bool": (record(due=True), "due"),
    "due-past-year-9999": (record(due=1e300), "due"),
    "due-negative": (record(due=-5), "due"),
    "created-infinity": (record(created=float("inf")), "json"),
    "created-negative": (record(created=-1.5), "created"),
    "created-string": (record(created="yesterday"), "created"),
    "num-attempts-negative": (record(num_attempts=-1), "num_attempts"),
    "num-attempts-float": (record(num_attempts=1.5), "num_attempts"),
    "num-attempts-string": (record(num_attempts="3"), "num_attempts"),
    "num-attempts-bool": (record(num_attempts=True), "num_attempts"),
    "num-attempts-over-u16": (record(num_attempts=65536), "num_attempts"),
    "meta-list": (record(meta=[]), "meta"),
    "meta-null": (record(meta=None), "meta"),
    "meta-queue-not-a-string": (record(meta={"queue": 5}), "meta"),
    "schedule-string": (record(schedule="daily"), "schedule"),
    "not-json": (b"{not json", "json"),
    "not-utf8": (b"\xc3\x28\xa0\xa1", "json"),
    "empty": (b"", "json"),
    "truncated": (record()[:20], "json"),
    "nested-too-deep": (b"[" * 200_000, "json"),
    "array": (b'["s@example.com", "r@example.com"]', "record"),
    "number": (b"5", "record"),
    "null": (b"null", "record"),
}


@pytest.mark.parametrize(("raw", "field"), BAD_RECORDS.values(), ids=list(BAD_RECORDS))
def test_a_bad_record_raises_the_error_that_names_its_field(raw: bytes, field: str) -> None:
    with pytest.raises(SpoolRecordError) as info:
        message_from_spool_bytes(new_spool_id(NOW), raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, SpoolCorruptError)


def test_good_records_still_load() -> None:
    msg_id = new_spool_id(NOW)
    msg = message_from_spool_bytes(msg_id, record())
    assert (msg.sender.email, msg.recipient.email) == ("s@example.com", "r@example.com")
    assert (msg.num_attempts, msg.due, msg.meta, msg.schedule) == (
        2,
        NOW + 60,
        {"tenant": "acme"},
        None,
    )
    again = message_from_spool_bytes(msg_id, json.dumps(msg.to_spool_meta()).encode())
    assert again.to_spool_meta() == msg.to_spool_meta()
    # KumoMTA's record: no num_attempts, due or created; the null sender; a list of recipients.
    kumo = message_from_spool_meta(
        msg_id, {"sender": "", "recipient": ["a@x.example", "b@y.example"], "meta": {}}
    )
    assert kumo.sender.is_null
    assert len(kumo.recipients) == 2
    assert (kumo.num_attempts, kumo.due) == (0, None)
    dated = message_from_spool_bytes(msg_id, record(due=1, created=NOW, num_attempts=65535))
    assert (dated.due, dated.created, dated.num_attempts) == (1.0, NOW, 65535)
    # No created: the time in the spool id, read when first asked.
    assert msg.created == spool_id_created(msg_id)


def test_spooled_message_gives_the_queue_name_and_keeps_senders_apart() -> None:
    seen = []
    for n in range(3):
        for sender in ("a@one.example", "b@two.example", ""):
            raw = json.dumps(
                {"sender": sender, "recipient": f"r{n}@d{n}.example", "meta": {"tenant": "t"}}
            ).encode()
            msg, queue = spooled_message(new_spool_id(NOW), raw)
            assert (msg.sender.email, msg.recipient.email) == (sender, f"r{n}@d{n}.example")
            assert queue == msg.queue_name() == f"t@d{n}.example"
            seen.append(msg.sender)
    assert seen[0] is seen[3]  # one parsed sender shared by every message it sent
    # The record's meta becomes the message's (no copy); a record given decoded is copied.
    meta = {"tenant": "t"}
    msg = message_from_spool_meta(
        new_spool_id(NOW), {"sender": "", "recipient": "r@x", "meta": meta}
    )
    msg.meta["campaign"] = "c"
    assert meta == {"tenant": "t"}


def test_fold_ops_keeps_the_writes_of_a_batch_with_a_quarantine() -> None:
    folded = fold_ops(
        [
            (STORE, "a", b"d", b"m"),
            (QUARANTINE, "a", None, b"first"),
            (QUARANTINE, "b", None, b"why"),
            (REMOVE, "c", None, None),
            (QUARANTINE, "a", None, b"second"),
        ]
    )
    assert folded.quarantines == [("a", "second"), ("b", "why")]
    assert folded.stores == [("a", b"d", b"m")]  # a quarantine never drops a write
    assert folded.removes == ["c"]


def definitions(root: Path, kind: str) -> tuple[SpoolDefinition, SpoolDefinition]:
    data, meta = (
        SpoolDefinition.from_mapping({"name": n, "path": str(root / n), "kind": kind})
        for n in ("data", "meta")
    )
    return data, meta


async def enumerated(spool: Spool) -> dict[str, bytes]:
    return {msg_id: meta async for msg_id, meta in spool.enumerate()}


async def start_and_enumerate(spool: SqliteSpool) -> None:
    await spool.start()
    try:
        await enumerated(spool)
    finally:
        await spool.close()


async def _damaged_sqlite(root: Path, offset: int | None) -> Path:
    """A SQLite spool of 300 small messages with 4 KB of garbage written at ``offset`` (the
    middle of the file when None); returns the database path."""
    spool = SqliteSpool(*definitions(root, "SQLite"))
    await spool.start()
    msg = Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse("r@example.com")],
    )
    meta = json.dumps(msg.to_spool_meta()).encode()
    await spool.store_many(
        [(new_spool_id(NOW), b"Subject: x\r\n\r\nbody\r\n", meta) for _ in range(300)]
    )
    await spool.close()
    db = root / "data" / DB_NAME
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096 if offset is None else offset)
        f.write(random.Random(9).randbytes(4096))
    return db


@pytest.mark.parametrize("where", ["middle", "header"])
async def test_a_damaged_sqlite_database_tells_the_operator_what_to_do(
    tmp_path: Path, where: str
) -> None:
    db = await _damaged_sqlite(tmp_path, None if where == "middle" else 0)
    spool = SqliteSpool(*definitions(tmp_path, "SQLite"))
    with pytest.raises(SpoolError) as info:
        await start_and_enumerate(spool)
    text = str(info.value)
    sqlite_error = "malformed" if where == "middle" else "not a database"
    assert f"spool database {db.absolute()} is unreadable: " in text
    assert sqlite_error in text
    assert f"in {db.parent.absolute()}:" in text
    assert "sqlite3 spool.sqlite3 .recover | sqlite3 recovered.sqlite3" in text
    for advice in ("cp -p", "-wal", "empty spool", "docs/operations.md"):
        assert advice in text
    # The lock was released (the same error again, not "locked"), and the file left as it was.
    again = SqliteSpool(*definitions(tmp_path, "SQLite"))
    with pytest.raises(SpoolError, match=sqlite_error):
        await start_and_enumerate(again)


class RecordingQueues:
    """Stands in for the QueueManager: records what enumeration inserts."""

    def __init__(self) -> None:
        self.inserted: list[str] = []

    def insert_enumerated(self, batch: Iterable[tuple[Message, str]], queues: object) -> None:
        for msg, queue_name in batch:
            assert queue_name == msg.queue_name()
            self.inserted.append(msg.id)


def quarantined_count(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "spool_quarantined_total", {"spool": "meta", "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("kind", ["LocalDisk", "SQLite", "RocksDB"])
async def test_enumeration_quarantines_bad_records_and_queues_the_rest(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(*definitions(tmp_path, kind))
    await spool.start()
    good = [new_spool_id(NOW) for _ in range(3)]
    bad = {new_spool_id(NOW): (raw, field) for raw, field in BAD_RECORDS.values()}
    bad_schedule = new_spool_id(NOW)
    items: list[tuple[str, bytes | None, bytes]] = [(i, b"data", record()) for i in good]
    items += [(i, b"data", raw) for i, (raw, _field) in bad.items()]
    items.append((bad_schedule, b"data", record(schedule={"tz": "Mars/Olympus"})))
    await spool.store_many(items)
    fields = [field for _raw, field in bad.values()] + ["schedule"]
    before = {f: quarantined_count(f) for f in set(fields)}
    queues = RecordingQueues()

    with caplog.at_level(logging.INFO, logger="kumoq.daemon"):
        await Daemon(tmp_path / "init.lua")._enumerate(spool, cast(QueueManager, queues))

    assert sorted(queues.inserted) == sorted(good)
    assert await enumerated(spool) == {i: record() for i in good}
    for f in set(fields):
        assert quarantined_count(f) - before[f] == fields.count(f), f
    for msg_id in [*bad, bad_schedule]:
        lines = [r.getMessage() for r in caplog.records if msg_id in r.getMessage()]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"spool entry {msg_id} is unreadable (")
        assert lines[0].endswith("moved to the spool's quarantine")
    assert "schedule: set_scheduling: dow, tz, start and end must be given together" in caplog.text
    assert f"3 messages re-queued, {len(bad) + 1} quarantined" in caplog.text
    await spool.close()


async def test_enumeration_leaves_a_record_it_cannot_move(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = LocalDiskSpool(*definitions(tmp_path, "LocalDisk"))
    await spool.start()
    msg_id = new_spool_id(NOW)
    await spool.store(msg_id, b"data", record(sender=5))
    (tmp_path / "meta" / "quarantine").write_text("a file where the directory should be")
    before = quarantined_count("sender")
    queues = RecordingQueues()
    await Daemon(tmp_path / "init.lua")._enumerate(spool, cast(QueueManager, queues))
    assert queues.inserted == []
    assert msg_id in await enumerated(spool)  # still spooled: the next start tries again
    assert quarantined_count("sender") == before
    assert "could not be quarantined" in caplog.text
    await spool.close()
