"""Adapts the maildir writer to the queue manager's ``Deliverer`` seam (reference §1.9).

Success is a ``Delivery`` record with code 200, ``site=""`` and ``delivery_protocol="Maildir"``;
a write failure is a ``TransientFailure`` with code 400, and only the failed recipients stay on
the message for the retry.
"""

from __future__ import annotations

from kumoq.config.queue import MaildirProtocol, QueueConfig
from kumoq.delivery.maildir import MaildirDeliverer
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, new_session_id
from kumoq.scheduler.attempt import Attempt

__all__ = ["MaildirDispatch"]


class MaildirDispatch:
    """``Deliverer`` for ``protocol = {maildir_path = ...}``."""

    def __init__(self, writer: MaildirDeliverer) -> None:
        self._writer = writer

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, MaildirProtocol)
        result = await self._writer.deliver(msg, protocol)
        session_id = new_session_id()
        if result.ok:
            content = result.delivery_content or ""
            return Attempt(
                RecordType.Delivery,
                Response(code=200, enhanced_code=None, content=content, command=None),
                delivery_protocol="Maildir",
                session_id=session_id,
            )
        msg.recipients = list(result.failed_recipients)
        return Attempt(
            RecordType.TransientFailure,
            Response(
                code=400, enhanced_code=None, content=result.failure_content or "", command=None
            ),
            delivery_protocol="Maildir",
            session_id=session_id,
        )
