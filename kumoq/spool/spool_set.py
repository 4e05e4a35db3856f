"""One spool in front, the spools of workers that no longer run behind it: ``SpoolSet``.

``kumoq serve --workers N`` gives each worker a spool directory of its own (kumoq.workers).
When the box restarts with fewer workers, the messages in the directories of the missing
workers must not wait for a worker that will never come: each remaining worker adopts some of
them (``kumoq.workers.adopted_paths``) and serves their messages as its own, without copying
them. ``SpoolSet`` is that: a ``Spool`` whose new messages go to the worker's own spool (the
``primary``), while a message enumerated from an adopted spool stays there: its updates,
loads, removal and quarantine go back to the spool it came from. Nothing is moved, so a crash
at any point leaves every message in exactly one spool, and the next start finds it again.

Each adopted spool is a complete spool of its own kind, with its own lock: a worker that still
ran on it (a misconfigured second supervisor) makes ``start`` fail with SpoolLockedError, as
for the primary.

Memory: one dict entry per adopted message still spooled (none when nothing is adopted).
Imports kumoq.spool.base only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import final

from kumoq.spool.base import Payload, Spool

__all__ = ["SpoolSet"]

log = logging.getLogger("kumoq.spool")


@final
class SpoolSet:
    """``primary`` for new messages; ``adopted`` spools keep serving what they hold."""

    __slots__ = ("_adopted", "_home", "_names", "_primary", "_started")

    def __init__(self, primary: Spool, adopted: Sequence[tuple[str, Spool]]) -> None:
        self._primary = primary
        self._adopted = [spool for _, spool in adopted]
        self._names = [name for name, _ in adopted]
        self._home: dict[str, Spool] = {}  # adopted message id -> the spool that holds it
        self._started: list[Spool] = []

    @property
    def primary(self) -> Spool:
        return self._primary

    @property
    def adopted_count(self) -> int:
        """Adopted messages still spooled."""
        return len(self._home)

    def _of(self, msg_id: str) -> Spool:
        return self._home.get(msg_id, self._primary)

    async def start(self) -> None:
        """Start the primary, then each adopted spool; on failure close what started."""
        try:
            for spool in (self._primary, *self._adopted):
                await spool.start()
                self._started.append(spool)
        except BaseException:
            await self.close()
            raise

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        await self._of(msg_id).store(msg_id, data, meta)

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        home = self._home
        if not home:
            await self._primary.store_many(items)
            return
        groups: dict[int, tuple[Spool, list[tuple[str, Payload | None, bytes]]]] = {}
        for item in items:
            spool = home.get(item[0], self._primary)
            groups.setdefault(id(spool), (spool, []))[1].append(item)
        for spool, group in groups.values():
            await spool.store_many(group)

    async def load_data(self, msg_id: str) -> bytes:
        return await self._of(msg_id).load_data(msg_id)

    async def remove(self, msg_id: str) -> None:
        spool = self._home.pop(msg_id, None)
        await (spool or self._primary).remove(msg_id)

    async def quarantine(self, msg_id: str, reason: str) -> None:
        spool = self._home.pop(msg_id, None)
        await (spool or self._primary).quarantine(msg_id, reason)

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        """The primary's messages, then each adopted spool's (remembering where they are)."""
        async for item in self._primary.enumerate():
            yield item
        for name, spool in zip(self._names, self._adopted, strict=True):
            count = 0
            async for msg_id, meta in spool.enumerate():
                self._home[msg_id] = spool
                count += 1
                yield msg_id, meta
            if count:
                log.info("spool %s: adopted %d messages of a worker that no longer runs",
                         name, count)  # fmt: skip

    async def close(self) -> None:
        """Close every started spool (the primary last); the first error is raised."""
        started, self._started = self._started, []
        error: BaseException | None = None
        for spool in reversed(started):
            try:
                await spool.close()
            except BaseException as exc:  # close the others all the same
                error = error or exc
        if error is not None:
            raise error
