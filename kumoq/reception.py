"""Reception: what happens between an SMTP command and its reply (reference §1.2).

``Reception`` implements the SMTP server's ``SmtpHandler`` seam. For each transaction it fires
the policy's events, splits the transaction into one message per recipient, prepends the
``Received:`` header, resolves each message's queue, stores every message durably in the spool,
logs ``Reception`` records, inserts the messages into the queue manager, and only then answers
``250 OK ids=...``. Any failure before the spool write answers 4xx and stores nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from kumoq.clock import Clock
from kumoq.errors import KumoqError, PolicyError, QueueNameError
from kumoq.logs.records import RecordType, Response
from kumoq.message import NULL_QUEUE, EnvelopeAddress, Message, new_spool_id
from kumoq.scheduler.manager import QueueManager, RecordSink
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import ConnectionMeta
from kumoq.spool.base import Spool

__all__ = ["Reception", "ReceptionEvents", "ReceptionRecords"]

log = logging.getLogger("kumoq.reception")


class ReceptionRecords(RecordSink, Protocol):
    """Record logging as reception needs it: message records plus SMTP rejections."""

    def log_rejection(
        self, conn_meta: dict[str, Any], command: str, response: Response
    ) -> None: ...


class ReceptionEvents(Protocol):
    """The policy events reception fires (kumoq.lua.events implements them)."""

    async def smtp_server_ehlo(
        self, domain: str, conn_meta: dict[str, Any], extensions: list[str]
    ) -> list[str] | None: ...

    async def smtp_server_mail_from(
        self, sender: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None: ...

    async def smtp_server_rcpt_to(
        self, recipient: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None: ...

    async def smtp_server_message_received(
        self, msg: Message, conn_meta: dict[str, Any]
    ) -> None: ...


class Reception:
    """The daemon's SMTP handler: one per listener, with that listener's hostname and trace
    header settings."""

    def __init__(
        self,
        *,
        events: ReceptionEvents,
        spool: Spool,
        queues: QueueManager,
        records: ReceptionRecords,
        clock: Clock,
        hostname: str,
        received_header: bool = True,
    ) -> None:
        self._events = events
        self._spool = spool
        self._queues = queues
        self._records = records
        self._clock = clock
        self._hostname = hostname
        self._received_header_enabled = received_header
        self._ready = False
        self._date_cache: tuple[int, str] = (0, "")

    def set_ready(self) -> None:
        """The spool has been enumerated: accept mail from now on."""
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply:
        # kumo.reject raises RejectError; the server turns it into the reply (and disconnects
        # when the policy asked for it).
        replaced = await self._events.smtp_server_ehlo(domain, conn, extensions)
        return extensions if replaced is None else replaced

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        await self._events.smtp_server_mail_from(sender, conn)
        return None

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        await self._events.smtp_server_rcpt_to(recipient, conn)
        return None

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        if reply.code == 421 and reply.enhanced == "4.3.2":
            return  # not ready / shutting down / idle: KumoMTA does not log these either
        self._records.log_rejection(conn, command, _response(reply, command))

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        now = self._clock.now()
        messages: list[Message] = []
        for rcpt in recipients:
            spool_id = new_spool_id(now)
            header = (
                self._received_header(conn, spool_id, rcpt, now)
                if self._received_header_enabled
                else b""
            )
            meta = dict(conn)
            messages.append(
                Message(
                    id=spool_id, sender=sender, recipients=[rcpt], meta=meta, data=header + data
                )
            )
        for msg in messages:
            # A kumo.reject here rejects the whole transaction: nothing has been stored yet.
            await self._events.smtp_server_message_received(msg, conn)

        spooled: list[Message] = []
        names: list[str] = []
        try:
            for msg in messages:
                name = msg.queue_name()
                names.append(name)
                if name != NULL_QUEUE:
                    await self._queues.resolve_waiting(name)
                    spooled.append(msg)
        except QueueNameError as exc:
            return Reply(451, "4.3.0", f"{self._hostname} technical difficulties: {exc}")
        except PolicyError as exc:
            log.error("get_queue_config failed: %s", exc)
            return Reply(451, "4.3.0", f"{self._hostname} technical difficulties: {exc}")

        if spooled:
            try:
                await asyncio.gather(*(self._store(m) for m in spooled))
            except KumoqError as exc:
                log.error("spool write failed: %s", exc)
                await asyncio.gather(
                    *(self._spool.remove(m.id) for m in spooled), return_exceptions=True
                )
                return Reply(451, "4.3.0", f"{self._hostname} spool error, try again later")

        ok = Response(code=250, enhanced_code=None, content="", command=None)
        peer = {"name": str(conn.get("ehlo_domain", "")), "addr": str(conn.get("received_from"))}
        for msg, name in zip(messages, names, strict=True):
            self._records.log(
                RecordType.Reception,
                msg,
                response=ok,
                peer_address=peer,
                reception_protocol="ESMTP",
                session_id=conn.get("session_id"),
            )
            if name != NULL_QUEUE:
                self._queues.insert(msg)
        return Reply(250, None, _ids_text(m.id for m in messages))

    async def _store(self, msg: Message) -> None:
        await self._spool.store(msg.id, msg.data, json.dumps(msg.to_spool_meta()).encode())

    def _received_header(
        self, conn: ConnectionMeta, spool_id: str, rcpt: EnvelopeAddress, now: float
    ) -> bytes:
        second = int(now)
        if self._date_cache[0] != second:
            stamp = datetime.fromtimestamp(second, UTC)
            self._date_cache = (second, email.utils.format_datetime(stamp))
        helo = conn.get("ehlo_domain") or "unknown"
        hostname = conn.get("hostname") or self._hostname
        local_ip = str(conn.get("received_via", "")).rpartition(":")[0] or "unknown"
        return (
            f"Received: from {helo} ({conn.get('received_from')})\r\n"
            f"  by {hostname} (kumoq {local_ip})\r\n"
            f"  with ESMTP id {spool_id} for <{rcpt.email}>;\r\n"
            f"  {self._date_cache[1]}\r\n"
        ).encode("utf-8", "surrogateescape")


def _response(reply: Reply, command: str | None) -> Response:
    enhanced = None
    if reply.enhanced:
        parts = reply.enhanced.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            enhanced = (int(parts[0]), int(parts[1]), int(parts[2]))
    return Response(code=reply.code, enhanced_code=enhanced, content=reply.text, command=command)


IDS_PER_LINE = 12  # 12 ids keep a reply line well under RFC 5321's 512 octets


def _ids_text(ids: Iterable[str]) -> str:
    """``OK ids=<id> <id> ...``; past 12 ids, continued on further lines of a multi-line reply
    (one long line would break clients such as smtplib, which stops at 8 KB)."""
    all_ids = list(ids)
    lines = [" ".join(all_ids[i : i + IDS_PER_LINE]) for i in range(0, len(all_ids), IDS_PER_LINE)]
    return "OK ids=" + "\n".join(lines)
