"""A message's end: its record is logged, then it leaves the spool or becomes a dead letter.

- ``finish``: a final outcome from a deliverer (``Delivery``, ``Bounce``): the record, then
  removed, or kept as a dead letter when a ``Bounce`` happens in a queue with
  ``dead_letter_retention`` (kumoq.scheduler.dead_letters).
- ``expire``: ``Expiration`` with its text and site; a dead letter in such a queue too.
- ``admin_bounce``: an operator's bounce rule (or delete-message): ``AdminBounce`` 551 5.7.1
  ``Administrator bounced with reason: <reason>``, site ``localhost``, unless the rule
  suppresses logging; then removed (never a dead letter: the operator asked for it).

Nothing here raises: a message that reached its end must not be attempted again, whatever the
log or the spool says (spools retry a failed remove in the background themselves).
"""

from __future__ import annotations

import logging
from typing import Any

from kumoq.config.queue import QueueConfig
from kumoq.errors import KumoqError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message
from kumoq.scheduler.admin_rules import ADMIN_BOUNCE_CODE, ADMIN_BOUNCE_ENHANCED
from kumoq.scheduler.attempt import RecordSink
from kumoq.scheduler.dead_letters import DeadLetters
from kumoq.scheduler.retry import Expired
from kumoq.spool.base import Spool

__all__ = ["Dispositions"]

log = logging.getLogger("kumoq.queue")

ADMIN_BOUNCE_SITE = "localhost"


class Dispositions:
    """Logs final records and takes messages out of the spool (or into the dead letters)."""

    def __init__(self, *, spool: Spool, records: RecordSink, dead_letters: DeadLetters) -> None:
        self._spool = spool
        self._records = records
        self.dead_letters = dead_letters

    def log(
        self, disposition: RecordType, msg: Message, response: Response, fields: dict[str, Any]
    ) -> None:
        """Log the outcome's record; never raises (a final outcome must not go round again)."""
        try:
            self._records.log(disposition, msg, response=response, **fields)
        except Exception:
            log.exception("message %s: writing its %s record failed", msg.id, disposition)

    async def remove(self, msg: Message) -> None:
        """Drop a message that is done from the spool; never raises."""
        try:
            await self._spool.remove(msg.id)
        except Exception:
            log.exception("message %s: removing it from the spool failed", msg.id)

    async def finish(
        self,
        msg: Message,
        queue: str,
        config: QueueConfig,
        disposition: RecordType,
        response: Response,
        fields: dict[str, Any],
    ) -> None:
        """A final outcome: its record, then removed or kept as a dead letter."""
        self.log(disposition, msg, response, fields)
        await self._remove_or_keep(msg, queue, config, disposition, response)

    async def expire(self, msg: Message, queue: str, config: QueueConfig, expired: Expired) -> None:
        response = Response(expired.code, expired.enhanced_code, expired.content, None)
        self.log(RecordType.Expiration, msg, response, {"site": expired.site})
        await self._remove_or_keep(msg, queue, config, RecordType.Expiration, response)

    async def admin_bounce(self, msg: Message, reason: str, *, suppress_logging: bool) -> None:
        if not suppress_logging:
            response = Response(
                ADMIN_BOUNCE_CODE,
                ADMIN_BOUNCE_ENHANCED,
                f"Administrator bounced with reason: {reason}",
                None,
            )
            self.log(RecordType.AdminBounce, msg, response, {"site": ADMIN_BOUNCE_SITE})
        await self.remove(msg)

    async def _remove_or_keep(
        self,
        msg: Message,
        queue: str,
        config: QueueConfig,
        disposition: RecordType,
        response: Response,
    ) -> None:
        retention = config.dead_letter_retention
        if retention is not None and disposition in (RecordType.Bounce, RecordType.Expiration):
            try:
                await self.dead_letters.keep(msg, queue, disposition, response, retention)
                return
            except KumoqError as exc:
                log.error("message %s: cannot keep it as a dead letter: %s", msg.id, exc)
            except Exception:
                log.exception("message %s: keeping it as a dead letter failed", msg.id)
        await self.remove(msg)
