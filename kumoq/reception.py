"""Reception: what happens between an SMTP command and its reply (reference §1.2).

``Reception`` implements the SMTP server's ``SmtpHandler`` seam. For each transaction it fires
the policy's events, splits the transaction into one message per recipient, prepends the
``Received:`` header, resolves each message's queue, stores every message durably in the spool,
logs ``Reception`` records, inserts the messages into the queue manager, and only then answers
``250 OK ids=...``.

The messages of a transaction share the body the client sent: each holds only its own
``Received:`` header, and the spool writes the two pieces without joining them
(``Message.data_parts``). A policy that changes one message's data gives that message a copy
of its own (``kumoq.message``).

While a ``free_space`` check reports a floor crossed (``kumoq.spool.health``), MAIL FROM is
answered ``452 4.3.1 Insufficient system storage`` before any policy event, as Postfix does;
the transactions already under way, and deliveries, go on.

A transaction is all or nothing: either the client gets 250 and every message is spooled and
queued, or it gets 4xx/5xx and nothing of the transaction stays in the spool. A failure before
the spool write stores nothing. A failed store takes the transaction's other messages back out
of the spool. The server cancels ``data()`` at ``data_processing_timeout`` and at the end of the
shutdown drain; a spool write in flight cannot be stopped (it runs on the writer thread), so a
cancellation that comes while the writes are in flight, or after they ended but before the
insert, lets them end and removes the transaction's messages before the cancellation goes on
(as KumoMTA unwinds a reception that passed its deadline).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.errors import KumoqError, PolicyError, QueueNameError
from kumoq.logs.records import RecordType, Response
from kumoq.message import NULL_QUEUE, EnvelopeAddress, Message, new_spool_id
from kumoq.scheduler.manager import QueueManager, RecordSink
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import ConnectionMeta
from kumoq.spool.base import Spool

__all__ = [
    "INSUFFICIENT_STORAGE",
    "Reception",
    "ReceptionEvents",
    "ReceptionRecords",
    "StorageCheck",
]

log = logging.getLogger("kumoq.reception")

#: The reply to MAIL FROM while storage is below a free-space floor (Postfix's).
INSUFFICIENT_STORAGE: Final = Reply(452, "4.3.1", "Insufficient system storage")


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


class StorageCheck(Protocol):
    """Whether storage has room for new mail (``kumoq.spool.health.FreeSpaceMonitor``)."""

    @property
    def problem(self) -> str | None:
        """Why new mail is refused, or None; read at each MAIL FROM, so it must not block."""
        ...


class Reception:
    """The daemon's SMTP handler: one per listener, with that listener's hostname and trace
    header settings. ``free_space``, shared by every listener, refuses new transactions
    while storage is too full."""

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
        free_space: StorageCheck | None = None,
    ) -> None:
        self._events = events
        self._free_space = free_space
        self._spool = spool
        self._queues = queues
        self._records = records
        self._clock = clock
        self._hostname = hostname
        self._received_header_enabled = received_header
        self._ready = False
        self._date_cache: tuple[int, str] = (0, "")
        self._tasks: set[asyncio.Task[None]] = set()

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
        if self._free_space is not None and self._free_space.problem is not None:
            return INSUFFICIENT_STORAGE
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
            # One body for the whole transaction: each message adds only its own header.
            messages.append(
                Message(
                    id=spool_id,
                    sender=sender,
                    recipients=[rcpt],
                    meta=meta,
                    data=header,
                    shared_body=data,
                )
            )
        for msg in messages:
            # A kumo.reject, or a cancellation, here ends the transaction: nothing is stored yet.
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

        if spooled and not await self._spool_all(spooled):
            return Reply(451, "4.3.0", f"{self._hostname} spool error, try again later")
        # The commit point: from here on nothing awaits, so nothing can cancel the reply.
        return self._accept(conn, messages, names)

    async def _spool_all(self, msgs: list[Message]) -> bool:
        """Store every message; False (after taking them all back out) when a store failed.

        A cancellation while the writes are in flight, or once they ended, waits for them to
        end, removes every message of the transaction, and then goes on: the caller answers
        4xx, so nothing may stay. Exceptions other than KumoqError propagate, after the same
        removal."""
        stores = asyncio.ensure_future(self._store_each(msgs))
        try:
            errors = await asyncio.shield(stores)
        except asyncio.CancelledError:
            await _to_the_end(self._unwind(msgs, stores))
            raise
        if not errors:
            return True
        log.error(
            "spool write failed; removing the %d messages of the transaction: %s",
            len(msgs), errors[0],
        )  # fmt: skip
        await _to_the_end(self._unwind(msgs, stores))
        for error in errors:
            if not isinstance(error, KumoqError):
                raise error
        return False

    async def _store_each(self, msgs: list[Message]) -> list[BaseException]:
        """Store all of ``msgs`` concurrently (they share a group commit); every failure."""
        if len(msgs) == 1:  # the common case: no task per store
            try:
                await self._store(msgs[0])
            except Exception as exc:
                return [exc]
            return []
        results = await asyncio.gather(*(self._store(m) for m in msgs), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    async def _unwind(self, msgs: list[Message], stores: asyncio.Future[Any] | None = None) -> None:
        """Take ``msgs`` back out of the spool, once ``stores`` has ended.

        Waiting first matters: a remove sent while its store is still in flight could land
        before it, and the ``Spool`` seam does not promise to keep their order."""
        if stores is not None:
            await asyncio.wait((stores,))
        results = await asyncio.gather(
            *(self._spool.remove(m.id) for m in msgs), return_exceptions=True
        )
        for msg, result in zip(msgs, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "message %s: removing it from the spool after a failed reception failed "
                    "(%s); it will be delivered after the next start",
                    msg.id, result,
                )  # fmt: skip

    def _accept(self, conn: ConnectionMeta, messages: list[Message], names: list[str]) -> Reply:
        """Log a ``Reception`` for each message and queue it; the 250. Never awaits.

        A message whose insert raises (a bug: the queue manager handles its own failures) is
        taken back out of the spool with a ``Bounce`` record, as KumoMTA's
        ``insert_or_unwind`` does; the reply is then ``250 PARTIAL``, or 451 if none was
        queued."""
        ok = Response(code=250, enhanced_code=None, content="", command=None)
        peer = {"name": str(conn.get("ehlo_domain", "")), "addr": str(conn.get("received_from"))}
        failed = 0
        for msg, name in zip(messages, names, strict=True):
            self._records.log(
                RecordType.Reception,
                msg,
                response=ok,
                peer_address=peer,
                reception_protocol="ESMTP",
                session_id=conn.get("session_id"),
            )
            if name == NULL_QUEUE:
                continue
            try:
                self._queues.insert(msg)
            except Exception as exc:
                log.exception("message %s: inserting it into its queue failed", msg.id)
                failed += 1
                content = f"KumoMTA internal: QueueManager::insert failed during reception: {exc}"
                self._records.log(
                    RecordType.Bounce, msg, response=Response(500, None, content, None)
                )
                self._background(self._unwind([msg]))
        if failed and failed == len(messages):
            return Reply(451, "4.3.0", f"{self._hostname} technical difficulties")
        disposition = "PARTIAL" if failed else "OK"
        return Reply(250, None, _ids_text((m.id for m in messages), disposition))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, msg: Message) -> None:
        meta = json.dumps(msg.to_spool_meta()).encode()
        await self._spool.store(msg.id, msg.data_parts(), meta)

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


def _ids_text(ids: Iterable[str], disposition: str = "OK") -> str:
    """``OK ids=<id> <id> ...``; past 12 ids, continued on further lines of a multi-line reply
    (one long line would break clients such as smtplib, which stops at 8 KB)."""
    all_ids = list(ids)
    lines = [" ".join(all_ids[i : i + IDS_PER_LINE]) for i in range(0, len(all_ids), IDS_PER_LINE)]
    return f"{disposition} ids=" + "\n".join(lines)


async def _to_the_end(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even when the current task is cancelled meanwhile, then raise
    that cancellation. Its own exceptions propagate."""
    task = asyncio.ensure_future(coro)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    task.result()
