"""Fault injection behind kumoq's own seams, for unit tests of the failure paths.

- ``FaultySpool`` wraps any ``Spool`` and makes chosen operations fail on command;
  ``NullSpool`` holds nothing.
- ``ScriptedDeliverer`` is a ``Deliverer`` that returns scripted attempts, raises, or hangs
  until released, and counts its calls.
- The clock seam is ``kumoq.clock.FakeClock``.

None of these replaces kumoq's logic: the queue manager, the spool's group commit and the
retries under test are the real ones. Only what sits behind a seam is scripted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kumoq.config.queue import QueueConfig
from kumoq.errors import SpoolCorruptError, SpoolError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message
from kumoq.scheduler.attempt import Attempt
from kumoq.spool.base import Payload, Spool

__all__ = ["FaultySpool", "NullSpool", "ScriptedDeliverer", "delivered", "transient_failure"]

SpoolOp = Literal["store", "store_many", "load_data", "remove"]


class FaultySpool:
    """A ``Spool`` that passes every call to ``inner`` unless told to fail it.

    ``fail(op, times=n)`` fails the next ``n`` calls of ``op`` (``times=None``: until
    ``heal(op)``) with ``error`` (a ``SpoolError`` by default). ``calls`` counts every call.
    """

    def __init__(self, inner: Spool) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._failing: dict[str, tuple[int | None, Callable[[], BaseException]]] = {}

    def fail(
        self,
        op: SpoolOp,
        times: int | None = None,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        self._failing[op] = (times, error or (lambda: SpoolError(f"injected {op} failure")))

    def heal(self, op: SpoolOp) -> None:
        self._failing.pop(op, None)

    def _check(self, op: str) -> None:
        self.calls[op] += 1
        entry = self._failing.get(op)
        if entry is None:
            return
        times, error = entry
        if times is not None:
            if times <= 1:
                del self._failing[op]
            else:
                self._failing[op] = (times - 1, error)
        raise error()

    async def start(self) -> None:
        await self.inner.start()

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        self._check("store")
        await self.inner.store(msg_id, data, meta)

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        self._check("store_many")
        await self.inner.store_many(items)

    async def load_data(self, msg_id: str) -> bytes:
        self._check("load_data")
        return await self.inner.load_data(msg_id)

    async def remove(self, msg_id: str) -> None:
        self._check("remove")
        await self.inner.remove(msg_id)

    def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        return self.inner.enumerate()

    async def quarantine(self, msg_id: str, reason: str) -> None:
        await self.inner.quarantine(msg_id, reason)

    async def close(self) -> None:
        await self.inner.close()


class NullSpool:
    """A ``Spool`` that holds nothing: stores and removes succeed and keep nothing, and
    ``load_data`` finds no data. For tests of what happens around the spool."""

    async def start(self) -> None:
        pass

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        pass

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        pass

    async def load_data(self, msg_id: str) -> bytes:
        raise SpoolCorruptError(f"no data for {msg_id}")

    async def remove(self, msg_id: str) -> None:
        pass

    async def quarantine(self, msg_id: str, reason: str) -> None:
        pass

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        nothing: tuple[tuple[str, bytes], ...] = ()
        for item in nothing:
            yield item

    async def close(self) -> None:
        pass


def delivered(site: str = "scripted") -> Attempt:
    return Attempt(RecordType.Delivery, Response(250, (2, 0, 0), "OK", None), site=site)


def transient_failure(text: str = "try later") -> Attempt:
    return Attempt(RecordType.TransientFailure, Response(451, (4, 0, 0), text, None))


@dataclass
class ScriptedDeliverer:
    """A ``Deliverer`` whose outcomes are scripted.

    Each call takes the next entry of ``script`` (the last one repeats; an empty script
    delivers): an ``Attempt`` is returned, an exception is raised. While ``hold`` is set, every
    call waits until ``release()``. ``calls`` lists the ids of the messages it was given.
    """

    script: list[Attempt | BaseException] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    hold: bool = False
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.hold = False
        self._released.set()

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        self.calls.append(msg.id)
        if self.hold:
            await self._released.wait()
        index = min(len(self.calls) - 1, len(self.script) - 1)
        outcome = self.script[index] if self.script else delivered()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
