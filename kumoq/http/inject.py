"""``POST /api/inject/v1``: KumoMTA's injection API (reference §1.3, §6.1).

One request, many recipients; each recipient becomes its own message:

1. its text is made (kumoq.http.inject_build: templates, MIME), with the meta KumoMTA sets:
   ``http_auth``, ``reception_protocol = "HTTP"``, ``received_from`` (the peer's IP),
   ``received_via`` (the local IP), ``hostname`` (the listener's) and ``extra`` (the
   recipient's ``metadata``, when it has any);
2. ``http_message_generated(msg, auth_info)`` fires; ``kumo.reject`` or an error in it fails
   that recipient only;
3. the message goes to the ``Admission`` seam (reception: queue resolution, durable spool
   write, ``Reception`` record with reception_protocol ``HTTP``, insert into the queue
   manager).

The answer, once every message is spooled, is KumoMTA's ``InjectV1Response``:
``{success_count, fail_count, failed_recipients, errors}`` with one ``"<email>: <why>"`` per
failure. A body that is not an InjectV1Request is 400 naming the field; a template or content
that does not compile is 422; before the spool is enumerated, during shutdown or below a
free-space floor the answer is 503 with the reason.

Bulk requests stream to the spool in bounded memory: messages are made and admitted in batches
of at most ``BATCH_MESSAGES`` messages or ``BATCH_BYTES`` of message text. One batch is being
admitted (its spool writes in flight) while the next is made, so a request for 10,000
recipients holds at most two batches of generated messages, and recipients whose template
variables do not differ share one body (kumoq.http.inject_build). If the request is cancelled
(shutdown), the batch being admitted is cancelled too, which takes it back out of the spool.

``deferred_generation`` and ``deferred_spool`` are accepted and ignored: the messages are made
and spooled before the answer, so ``success_count`` is always the real count.

Imports kumoq.http.app, .auth, .availability, .body, .errors, .inject_build, .inject_schema,
kumoq.message, kumoq.errors and kumoq.clock; must not import kumoq.reception (the seam is
``Admission``), kumoq.lua (the seam is ``PolicyCalls``) or the other route modules.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final, Protocol

from aiohttp import web

from kumoq.clock import Clock
from kumoq.errors import AddressError, PolicyError, PolicyWouldBlock, RejectError
from kumoq.http.app import Route, local_ip, peer_ip
from kumoq.http.auth import AuthInfo, PolicyCalls
from kumoq.http.availability import Availability
from kumoq.http.body import read_json
from kumoq.http.errors import ApiError
from kumoq.http.inject_build import CompiledContent, ContentError, RenderError
from kumoq.http.inject_schema import InjectV1Request, Recipient, SchemaError, parse_inject_request
from kumoq.message import EnvelopeAddress, Message, new_spool_id

__all__ = ["Admission", "InjectResult", "Injector", "Origin", "routes"]

log = logging.getLogger("kumoq.http")

PATH: Final = "/api/inject/v1"
EVENT: Final = "http_message_generated"
#: A batch is admitted (spooled together) when it has this many messages...
BATCH_MESSAGES: Final = 256
#: ...or this many bytes of message text not shared with a message already in the batch.
BATCH_BYTES: Final = 8 * 1024 * 1024
#: How many DNS waits (``kumo.dns.lookup_mx``) one event call may take.
POLICY_WAIT_RERUNS: Final = 4


class Admission(Protocol):
    """Spooling, logging and queueing generated messages (kumoq.reception implements it)."""

    async def admit(
        self, messages: list[Message], *, peer: dict[str, str], reception_protocol: str
    ) -> list[str | None]:
        """Per message: None when it was spooled and queued, else why not."""
        ...


@dataclass(slots=True)
class InjectResult:
    """KumoMTA's InjectV1Response."""

    success_count: int = 0
    fail_count: int = 0
    failed_recipients: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def fail(self, email: str, reason: str) -> None:
        self.fail_count += 1
        self.failed_recipients.append(email)
        self.errors.append(f"{email}: {reason}")

    def to_json(self) -> dict[str, Any]:
        return {
            "success_count": self.success_count,
            "fail_count": self.fail_count,
            "failed_recipients": self.failed_recipients,
            "errors": self.errors,
        }


class _Failed(Exception):
    """One recipient failed; the text goes into ``errors``."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Who injects: the caller's AuthInfo, the peer's IP and the local IP."""

    auth: AuthInfo
    peer: str
    via: str


class Injector:
    """The inject endpoint of one listener."""

    def __init__(
        self,
        *,
        admission: Admission,
        policy: PolicyCalls,
        clock: Clock,
        availability: Availability,
        hostname: str,
        body_limit: int,
    ) -> None:
        self._admission = admission
        self._policy = policy
        self._clock = clock
        self._availability = availability
        self._hostname = hostname
        self._body_limit = body_limit

    async def handle(self, request: web.Request, auth: AuthInfo) -> web.Response:
        self._availability.check()
        document = await read_json(request, self._body_limit)
        try:
            parsed = parse_inject_request(document)
        except SchemaError as exc:
            raise ApiError(400, str(exc), field=exc.field or None) from None
        del document
        try:
            compiled = CompiledContent(parsed)
        except ContentError as exc:
            raise ApiError(422, str(exc)) from None
        origin = Origin(auth, peer_ip(request), local_ip(request))
        result = await self.inject(parsed, compiled, origin)
        return web.json_response(result.to_json())

    async def inject(
        self, request: InjectV1Request, compiled: CompiledContent, origin: Origin
    ) -> InjectResult:
        """Make, fire, spool and queue every recipient's message, batch by batch."""
        result = InjectResult()
        batch: list[tuple[str, Message]] = []
        size = 0
        last_body: bytes | None = None
        admitting: asyncio.Task[None] | None = None
        try:
            for count, recipient in enumerate(request.recipients, 1):
                if count % BATCH_MESSAGES == 0:
                    await asyncio.sleep(0)  # let the loop breathe even when nothing is admitted
                try:
                    msg, prefix, body = self._make(request, compiled, recipient, origin)
                    await self._fire(msg, origin.auth)
                except _Failed as exc:
                    result.fail(recipient.email, str(exc))
                    continue
                batch.append((recipient.email, msg))
                size += len(prefix) + (len(body) if body is not last_body else 0)
                last_body = body
                if len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                    if admitting is not None:
                        await admitting
                    admitting = asyncio.ensure_future(self._admit(batch, origin, result))
                    batch, size, last_body = [], 0, None
            if admitting is not None:
                await admitting
                admitting = None
            if batch:
                await self._admit(batch, origin, result)
        finally:
            if admitting is not None and not admitting.done():
                admitting.cancel()
                await asyncio.wait((admitting,))
        return result

    def _make(
        self,
        request: InjectV1Request,
        compiled: CompiledContent,
        recipient: Recipient,
        origin: Origin,
    ) -> tuple[Message, bytes, bytes]:
        try:
            address = EnvelopeAddress.parse(recipient.email)
        except AddressError as exc:
            raise _Failed(f"recipient email: {exc}") from None
        if address.is_null:
            raise _Failed("recipient email: the null address is not a recipient")
        now = self._clock.now()
        try:
            prefix, body = compiled.render(recipient, now)
        except RenderError as exc:
            raise _Failed(str(exc)) from None
        spool_id = new_spool_id(now)
        if request.trace_headers.received_header:
            prefix = (
                self._received(request.envelope_sender, address, spool_id, origin, now) + prefix
            )
        meta: dict[str, Any] = {
            "http_auth": origin.auth.http_auth,
            "reception_protocol": "HTTP",
            "received_from": origin.peer,
            "received_via": origin.via,
            "hostname": self._hostname,
        }
        if recipient.metadata:
            meta["extra"] = dict(recipient.metadata)
        msg = Message(
            id=spool_id,
            sender=request.envelope_sender,
            recipients=[address],
            meta=meta,
            data=prefix,
            shared_body=body,
        )
        return msg, prefix, body

    def _received(
        self,
        sender: EnvelopeAddress,
        recipient: EnvelopeAddress,
        spool_id: str,
        origin: Origin,
        now: float,
    ) -> bytes:
        stamp = format_datetime(datetime.fromtimestamp(int(now), UTC))
        return (
            f"Received: from {sender.domain or 'unknown'} ({origin.peer})\r\n"
            f"  by {self._hostname} (kumoq)\r\n"
            f"  with HTTP id {spool_id} for <{recipient.email}>;\r\n"
            f"  {stamp}\r\n"
        ).encode("utf-8", "surrogateescape")

    async def _fire(self, msg: Message, auth: AuthInfo) -> None:
        """``http_message_generated(msg, auth_info)``; raises _Failed for that recipient."""
        if not self._policy.has_handler(EVENT):
            return
        try:
            for _ in range(POLICY_WAIT_RERUNS):
                try:
                    self._policy.call(EVENT, msg, auth.to_json())
                    return
                except PolicyWouldBlock as wait:
                    await wait.wait()
        except RejectError as exc:
            raise _Failed(f"{exc.code} {exc.reply_text}") from None
        except PolicyError as exc:  # the error and its file:line stay in the log
            log.error("%s failed for %s: %s", EVENT, msg.recipient.email, exc)
            raise _Failed(f"451 4.3.0 technical difficulties: {EVENT} failed") from None
        raise _Failed(f"{EVENT}: still waiting for DNS")

    async def _admit(
        self, batch: list[tuple[str, Message]], origin: Origin, result: InjectResult
    ) -> None:
        outcomes = await self._admission.admit(
            [msg for _, msg in batch],
            peer={"name": "", "addr": origin.peer},
            reception_protocol="HTTP",
        )
        for (email, _), outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                result.success_count += 1
            else:
                result.fail(email, outcome)


def routes(injector: Injector) -> list[Route]:
    return [Route("POST", PATH, injector.handle)]
