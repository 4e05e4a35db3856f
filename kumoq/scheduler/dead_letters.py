"""The dead-letter store: messages that bounced or expired, kept for ``dead_letter_retention``
(a kumoq extension of ``make_queue_config``; off by default, as in KumoMTA, which removes them).

A message whose queue sets a retention is not removed from the spool at its ``Bounce`` or
``Expiration``: its meta record is rewritten with a ``dead_letter`` block (``since``,
``until``, ``record_type``, ``response``), so it survives a restart, and it is listed here.
The operator lists, shows, requeues (attempts reset, due now, back into its queue) or purges
dead letters; past ``until`` they are purged by a timer. Each step logs a ``DeadLetter``
record whose response says what happened (``kept until ...``, ``requeued ...``,
``purged ...``), after the usual ``Bounce`` or ``Expiration`` record.

Listing is in the order messages entered the store; a cursor is the position of the next
entry, so a page costs O(position) dict steps at worst (C speed; about 5 ms at 1,000,000).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kumoq.clock import Clock
from kumoq.errors import KumoqError
from kumoq.logs.records import RecordType, Response, rfc3339
from kumoq.message import Message
from kumoq.scheduler.attempt import RecordSink
from kumoq.spool.base import Spool

__all__ = ["DEAD_LETTER_KEY", "DeadLetter", "DeadLetters", "dead_letter_block"]

log = logging.getLogger("kumoq.queue")

DEAD_LETTER_KEY: Final = "dead_letter"  # the meta record's block
_FINAL_TYPES: Final = {RecordType.Bounce.value, RecordType.Expiration.value}


@dataclass(slots=True)
class DeadLetter:
    msg: Message  # without its data
    queue: str
    record_type: RecordType  # Bounce or Expiration
    response: Response
    since: float
    until: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.msg.id,
            "queue": self.queue,
            "sender": self.msg.sender.email,
            "recipient": self.msg.recipient.email,
            "record_type": self.record_type.value,
            "response": self.response.one_line(),
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
            "num_attempts": self.msg.num_attempts,
        }


def dead_letter_block(record: object) -> dict[str, Any] | None:
    """The ``dead_letter`` block of a decoded meta record, if it has a valid one."""
    if not isinstance(record, dict):
        return None
    block = record.get(DEAD_LETTER_KEY)
    if not isinstance(block, dict):
        return None
    ok = (
        isinstance(block.get("since"), int | float)
        and isinstance(block.get("until"), int | float)
        and block.get("record_type") in _FINAL_TYPES
        and isinstance(block.get("code"), int)
        and isinstance(block.get("content"), str)
    )
    return block if ok else None


class DeadLetters:
    """Every dead letter by id, and the timer that purges them after their retention."""

    def __init__(self, *, spool: Spool, records: RecordSink, clock: Clock) -> None:
        self._spool = spool
        self._records = records
        self._clock = clock
        self._entries: dict[str, DeadLetter] = {}
        self._expiry: list[tuple[float, str]] = []  # (until, id); stale ids are skipped
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[int]] = set()
        self._closing = False
        #: called with the message a requeue gives back (the queue manager's ``insert``)
        self.requeue_into: Callable[[Message], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, msg_id: str) -> DeadLetter | None:
        return self._entries.get(msg_id)

    # -- entering ------------------------------------------------------------------------------

    async def keep(
        self, msg: Message, queue: str, kind: RecordType, response: Response, retention: float
    ) -> None:
        """Keep ``msg`` (its final record is already logged) for ``retention`` seconds.
        Raises KumoqError when its meta cannot be rewritten (the caller removes it instead)."""
        now = self._clock.now()
        entry = DeadLetter(msg, queue, kind, response, now, now + retention)
        msg.data = None
        msg.due = None
        meta = {**msg.to_spool_meta(), DEAD_LETTER_KEY: _block(entry)}
        await self._spool.store(msg.id, None, json.dumps(meta).encode())
        self._add(entry)
        self._log(entry, f"kept as a dead letter until {rfc3339(entry.until)}: "
                         f"{response.one_line()}")  # fmt: skip

    def restore(self, msg: Message, queue: str, block: dict[str, Any]) -> None:
        """A dead letter found at enumeration (``dead_letter_block`` of its meta)."""
        response = Response(block["code"], _enhanced(block.get("enhanced")), block["content"], None)
        kind = RecordType(block["record_type"])
        self._add(DeadLetter(msg, queue, kind, response, block["since"], block["until"]))

    def _add(self, entry: DeadLetter) -> None:
        self._entries[entry.msg.id] = entry
        heapq.heappush(self._expiry, (entry.until, entry.msg.id))
        if self._expiry[0][1] == entry.msg.id:
            self._arm()

    # -- listing -------------------------------------------------------------------------------

    def page(
        self, queue: str | None, cursor: str | None, limit: int
    ) -> tuple[list[DeadLetter], str | None]:
        """Up to ``limit`` dead letters (of ``queue`` if given) after ``cursor``; the next
        cursor (``None``: the end). Raises ValueError for a cursor that does not parse."""
        start = 0
        if cursor:
            if not cursor.isdigit():
                raise ValueError(f"not a dead-letter cursor: {cursor!r}")
            start = int(cursor)
        out: list[DeadLetter] = []
        position = start
        for entry in itertools.islice(self._entries.values(), start, None):
            position += 1
            if queue is None or entry.queue == queue:
                out.append(entry)
                if len(out) == limit:
                    break
        more = position < len(self._entries) and len(out) == limit
        return out, (str(position) if more else None)

    def select(self, ids: list[str] | None, queue: str | None) -> list[str]:
        if ids is not None:
            return [i for i in ids if i in self._entries]
        return [i for i, e in self._entries.items() if queue is None or e.queue == queue]

    # -- leaving -------------------------------------------------------------------------------

    async def requeue(self, ids: list[str]) -> int:
        """Give each message back to its queue: attempts reset, due now. Returns how many."""
        assert self.requeue_into is not None, "the queue manager sets requeue_into"
        count = 0
        for msg_id in ids:
            entry = self._entries.get(msg_id)
            if entry is None:
                continue
            msg = entry.msg
            msg.num_attempts = 0
            msg.due = None
            msg.last_response = None
            try:  # the meta without its dead_letter block: a restart queues it normally
                await self._spool.store(msg.id, None, json.dumps(msg.to_spool_meta()).encode())
            except KumoqError as exc:
                log.error("dead letter %s: cannot requeue it: %s", msg_id, exc)
                continue
            del self._entries[msg_id]
            self._log(entry, "requeued by the operator")
            self.requeue_into(msg)
            count += 1
        return count

    async def purge(self, ids: list[str], why: str = "purged by the operator") -> int:
        """Remove each from the spool, with a ``DeadLetter`` record. Returns how many."""
        count = 0
        for msg_id in ids:
            entry = self._entries.pop(msg_id, None)
            if entry is None:
                continue
            try:
                await self._spool.remove(msg_id)
            except KumoqError as exc:  # spools retry a failed remove themselves
                log.error("dead letter %s: removing it from the spool failed: %s", msg_id, exc)
            self._log(entry, why)
            count += 1
        return count

    def _log(self, entry: DeadLetter, what: str) -> None:
        code = entry.response.code
        try:
            self._records.log(
                RecordType.DeadLetter,
                entry.msg,
                response=Response(code, entry.response.enhanced_code, what, None),
                queue=entry.queue,
            )
        except Exception:
            log.exception("dead letter %s: writing its record failed", entry.msg.id)

    # -- retention -----------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._closing or not self._expiry:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._expiry[0][0] - self._clock.now())
        self._timer = asyncio.get_running_loop().call_later(min(delay, 86400.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.now()
        due: list[str] = []
        while self._expiry and self._expiry[0][0] <= now:
            _, msg_id = heapq.heappop(self._expiry)
            entry = self._entries.get(msg_id)
            if entry is not None and entry.until <= now:
                due.append(msg_id)
        if due:
            task = asyncio.ensure_future(self.purge(due, "purged: its retention has passed"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm()

    async def close(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)


def _block(entry: DeadLetter) -> dict[str, Any]:
    response = entry.response
    return {
        "since": entry.since,
        "until": entry.until,
        "record_type": entry.record_type.value,
        "code": response.code,
        "enhanced": list(response.enhanced_code) if response.enhanced_code else None,
        "content": response.content,
    }


def _enhanced(value: object) -> tuple[int, int, int] | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return (value[0], value[1], value[2])
    return None
