"""Reception: what happens between an SMTP command and its reply (reference §1.2).

``Reception`` implements the SMTP server's ``SmtpHandler`` seam (and ``ListenerDomains``:
``get_listener_domain`` for the relay decision). For each transaction, in KumoMTA's order, it
fires ``smtp_server_data`` once on a message holding every recipient and the data as received,
splits that message into one message per recipient (its recipients, data and meta as the
policy left them; the envelope sender as received), prepends the ``Received:`` header, fires
``smtp_server_message_received`` for each, resolves each message's queue, decides relaying
again for each message by its first recipient (``smtp/relay.py``), stores every relayed
message durably in the spool, logs ``Reception`` records (for every message, relayed or not),
inserts the relayed messages into the queue manager, and only then answers ``250 OK ids=...``,
or ``550 5.7.1 relaying not permitted`` when no message was relayed nor sent to the ``null``
queue.

The messages of a transaction share the body the client sent: each holds only its own
``Received:`` header, and the spool writes the two pieces without joining them
(``Message.data_parts``). A policy that changes one message's data gives that message a copy
of its own (``kumoq.message``).

While a ``free_space`` check reports a floor crossed (``kumoq.spool.health``), MAIL FROM is
answered ``452 4.3.1 Insufficient system storage`` before any policy event, as Postfix does;
the transactions already under way, and deliveries, go on.

``admit`` takes messages that another front end made and fired its own event for (HTTP
injection, kumoq.http): the same queue resolution, spooling, ``Reception`` records and insert,
but each message stands alone and gets its own outcome.

Each accepted message counts in ``kumoq_messages_received_by_priority`` (kumoq.metrics), by
its ``priority`` meta as the policy left it.

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

from kumoq.clock import Clock, LoopBound
from kumoq.config.listener_domain import ListenerDomain
from kumoq.errors import KumoqError, PolicyError, QueueNameError
from kumoq.logs.records import RecordType, Response
from kumoq.message import NULL_QUEUE, EnvelopeAddress, Message, new_spool_id, priority_of
from kumoq.metrics import MESSAGES_RECEIVED_BY_PRIORITY
from kumoq.scheduler.manager import QueueManager, RecordSink
from kumoq.smtp.relay import SessionMeta
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

#: An admitted message whose queue cannot be resolved: the reason is logged, not sent back.
POLICY_FAILED: Final = "451 4.3.0 technical difficulties (the reason is in kumoq's log)"

#: The reply to MAIL FROM while storage is below a free-space floor (Postfix's).
INSUFFICIENT_STORAGE: Final = Reply(452, "4.3.1", "Insufficient system storage")
#: The reply to DATA when no message of the transaction may be relayed (KumoMTA's).
RELAYING_DENIED: Final = Reply(550, "5.7.1", "relaying not permitted")
_NOT_RELAYED: Final = ""  # in place of a queue name: received, but neither spooled nor queued
_NOT_QUEUED: Final = frozenset({NULL_QUEUE, _NOT_RELAYED})

#: ``kumoq_messages_received_by_priority``'s series, bound once, by priority (0 to 3).
_RECEIVED_BY_PRIORITY: Final = tuple(
    MESSAGES_RECEIVED_BY_PRIORITY.labels(priority=str(p)) for p in range(4)
)


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

    async def get_listener_domain(
        self, domain: str, listener: str, conn_meta: dict[str, Any]
    ) -> ListenerDomain | None: ...

    async def smtp_server_data(self, msg: Message, conn_meta: dict[str, Any]) -> None: ...

    async def smtp_server_message_received(
        self, msg: Message, conn_meta: dict[str, Any]
    ) -> None: ...


class StorageCheck(Protocol):
    """Whether storage has room for new mail (``kumoq.spool.health.FreeSpaceMonitor``)."""

    @property
    def problem(self) -> str | None:
        """Why new mail is refused, or None; read at each MAIL FROM, so it must not block."""
        ...


class Reception(LoopBound):
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

    @property
    def storage_problem(self) -> str | None:
        """Why storage refuses new mail now (a free-space floor crossed), or None. No IO."""
        return None if self._free_space is None else self._free_space.problem

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

    async def get_listener_domain(self, conn: ConnectionMeta, domain: str) -> ListenerDomain | None:
        """``get_listener_domain(domain, listener, conn_meta)``; the listener is the local
        ``ip:port`` the client connected to (``received_via``), as KumoMTA passes it."""
        listener = str(conn.get("received_via", ""))
        return await self._events.get_listener_domain(domain, listener, conn)

    async def auth_plain(self, conn: ConnectionMeta, authz: str, authc: str, password: str) -> bool:
        """``smtp_server_auth_plain(authz, authc, password, conn_meta)`` (AUTH PLAIN or LOGIN,
        after STARTTLS; fired through ``PolicyEvents.call``): ``true`` accepts, and the
        identities go into the connection meta as ``authz_id`` and ``authn_id`` (KumoMTA's
        names). No handler, or any other result, refuses."""
        call = getattr(self._events, "call", None)  # PolicyEvents.call; test fakes may lack it
        if call is None or call("smtp_server_auth_plain", authz, authc, password, conn) is not True:
            return False
        conn["authz_id"], conn["authn_id"] = authz, authc
        return True

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
        # The whole transaction first (never spooled): its data as received, no trace header.
        whole = Message(
            id=new_spool_id(now), sender=sender, recipients=list(recipients),
            meta=dict(conn), data=b"", shared_body=data,
        )  # fmt: skip
        await self._events.smtp_server_data(whole, conn)
        body = whole.data or b""  # the shared body itself when the policy left it alone
        messages: list[Message] = []
        for rcpt in whole.recipients:
            spool_id = new_spool_id(now)
            header = (
                self._received_header(conn, spool_id, rcpt, now)
                if self._received_header_enabled
                else b""
            )
            # One body for the whole transaction: each message adds only its own header.
            # The sender is the one received, as in KumoMTA, whatever the policy set.
            messages.append(
                Message(
                    id=spool_id,
                    sender=sender,
                    recipients=[rcpt],
                    meta=dict(whole.meta),
                    data=header,
                    shared_body=body,
                )
            )
        for msg in messages:
            # A kumo.reject, or a cancellation, here ends the transaction: nothing is stored yet.
            await self._events.smtp_server_message_received(msg, conn)

        names: list[str] = []
        try:
            for msg in messages:
                name = msg.queue_name()
                names.append(name)
                if name != NULL_QUEUE:
                    await self._queues.resolve_waiting(name)
        except (QueueNameError, PolicyError) as exc:  # logged; policy text never reaches the client
            log.error("no queue for a received message: %s", exc)
            return Reply(451, "4.3.0", f"{self._hostname} technical difficulties")
        if isinstance(conn, SessionMeta):  # KumoMTA's rule: a message relays by its first rcpt
            for index, msg in enumerate(messages):
                relay = await conn.relay.disposition(msg.sender, msg.recipients[0])
                if not relay.relay and names[index] != NULL_QUEUE:
                    names[index] = _NOT_RELAYED  # logged as received, not spooled nor queued
        spooled = [m for m, n in zip(messages, names, strict=True) if n not in _NOT_QUEUED]

        if spooled and not await self._spool_all(spooled):
            return Reply(451, "4.3.0", f"{self._hostname} spool error, try again later")
        # The commit point: from here on nothing awaits, so nothing can cancel the reply.
        reply = self._accept(conn, messages, names)
        return reply if spooled or NULL_QUEUE in names else RELAYING_DENIED

    async def _spool_all(self, msgs: list[Message]) -> bool:
        """Store every message; False (after taking them all back out) when a store failed.

        A cancellation while the writes are in flight, or once they ended, waits for them to
        end, removes every message of the transaction, and then goes on: the caller answers
        4xx, so nothing may stay. Exceptions other than KumoqError propagate, after the same
        removal."""
        stores = self._loop.create_task(self._store_each(msgs))
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

        A message whose insert raises is handled by ``_log_and_queue``; the reply is then
        ``250 PARTIAL``, or 451 if none was queued."""
        peer = {"name": str(conn.get("ehlo_domain", "")), "addr": str(conn.get("received_from"))}
        failed = self._log_and_queue(messages, names, peer, "ESMTP", conn.get("session_id"))
        if failed and len(failed) == len(messages):
            return Reply(451, "4.3.0", f"{self._hostname} technical difficulties")
        disposition = "PARTIAL" if failed else "OK"
        return Reply(250, None, _ids_text((m.id for m in messages), disposition))

    def _log_and_queue(
        self,
        messages: list[Message],
        names: list[str],
        peer: dict[str, str],
        reception_protocol: str,
        session_id: str | None,
    ) -> list[int]:
        """Log a ``Reception`` for each (spooled) message and insert it; the indexes of those
        whose insert raised. Never awaits.

        A message whose insert raises (a bug: the queue manager handles its own failures) is
        taken back out of the spool with a ``Bounce`` record, as KumoMTA's
        ``insert_or_unwind`` does."""
        ok = Response(code=250, enhanced_code=None, content="", command=None)
        failed: list[int] = []
        for index, (msg, name) in enumerate(zip(messages, names, strict=True)):
            try:  # past the commit point: a record that cannot be written stops nothing
                self._records.log(
                    RecordType.Reception,
                    msg,
                    response=ok,
                    peer_address=peer,
                    reception_protocol=reception_protocol,
                    session_id=session_id,
                    **{k: v for k, t in _TLS_FIELDS if isinstance(v := msg.meta.get(k), t)},
                )
            except Exception:
                log.exception("message %s: writing its Reception record failed", msg.id)
            _RECEIVED_BY_PRIORITY[priority_of(msg)].inc()
            if name in _NOT_QUEUED:
                continue
            try:
                self._queues.insert(msg)
            except Exception as exc:
                log.exception("message %s: inserting it into its queue failed", msg.id)
                failed.append(index)
                content = f"KumoMTA internal: QueueManager::insert failed during reception: {exc}"
                self._records.log(
                    RecordType.Bounce, msg, response=Response(500, None, content, None)
                )
                self._background(self._unwind([msg]))
        return failed

    async def admit(
        self, messages: list[Message], *, peer: dict[str, str], reception_protocol: str
    ) -> list[str | None]:
        """Resolve each message's queue, store the messages (sharing group commits), log their
        ``Reception`` records and queue them; per message, None when it was taken or the reason
        it was not. The caller has fired its own policy event for each message.

        Unlike ``data``, each message stands alone: a queue that cannot be resolved fails only
        its message. A failed store fails (and takes back out of the spool) every message of
        the call that was to be stored; a cancellation during the stores does the same, as in
        ``data``, and then propagates. Exceptions other than KumoqError propagate."""
        outcomes: list[str | None] = [None] * len(messages)
        taken: list[int] = []
        to_store: list[Message] = []
        names: list[str] = []
        for index, msg in enumerate(messages):
            try:
                name = msg.queue_name()
                if name != NULL_QUEUE:
                    await self._queues.resolve_waiting(name)
                    to_store.append(msg)
            except (QueueNameError, PolicyError) as exc:  # the text stays in the log
                log.error("message %s: cannot resolve its queue: %s", msg.id, exc)
                outcomes[index] = POLICY_FAILED
                continue
            taken.append(index)
            names.append(name)
        if to_store and not await self._spool_all(to_store):
            for index, name in zip(taken, names, strict=True):
                if name != NULL_QUEUE:
                    outcomes[index] = "spool error, try again later"
            names = [NULL_QUEUE] * sum(1 for index in taken if outcomes[index] is None)
            taken = [index for index in taken if outcomes[index] is None]
        kept = [messages[index] for index in taken]
        for i in self._log_and_queue(kept, names, peer, reception_protocol, None):
            outcomes[taken[i]] = "internal error: the message could not be queued"
        return outcomes

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
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
        protocol, tls = "ESMTP", conn.get("tls_protocol_version")
        if tls:  # RFC 3848's ESMTPS and ESMTPSA, then "(version:cipher)" as KumoMTA writes
            protocol = "ESMTPSA" if conn.get("authn_id") else "ESMTPS"
            protocol += f" ({tls}:{conn.get('tls_cipher')})"
        return (
            f"Received: from {helo} ({conn.get('received_from')})\r\n"
            f"  by {hostname} (kumoq {local_ip})\r\n"
            f"  with {protocol} id {spool_id} for <{rcpt.email}>;\r\n"
            f"  {self._date_cache[1]}\r\n"
        ).encode("utf-8", "surrogateescape")


def _response(reply: Reply, command: str | None) -> Response:
    enhanced = None
    if reply.enhanced:
        parts = reply.enhanced.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            enhanced = (int(parts[0]), int(parts[1]), int(parts[2]))
    return Response(code=reply.code, enhanced_code=enhanced, content=reply.text, command=command)


# The connection meta's TLS details, which Reception records also carry as fields.
_TLS_FIELDS: Final = (
    ("tls_cipher", str),
    ("tls_protocol_version", str),
    ("tls_peer_subject_name", list),
)

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
