"""The handler side of one inbound ESMTP connection: each session event that needs a decision
goes to the ``SmtpHandler``, and its outcome becomes the reply.

``HandlerCalls`` is the base of ``SmtpConnection`` (``smtp/connection.py``, the transport
side: socket callbacks, backpressure, timers, the TLS handshake, and the loop that takes
events from the session). It owns the connection's ``ServerSession``, its ``ConnectionMeta``
and the replies waiting to be written, and drives the handler calls:

- ``ehlo``, ``mail_from``, ``rcpt_to`` and ``auth_plain`` are stepped eagerly (``_step``): one
  that finishes without suspending is answered at once; one that suspends is finished in a task
  (``smtp/eager.py``). ``data`` always runs in a task, bounded by ``data_processing_timeout``.
- an outcome becomes the reply (``_complete``): the handler's Reply, ``kumo.reject``'s, or
  ``451 4.3.0 <host> technical difficulties`` for any other exception (a Lua error in the
  policy): the error is logged with its ``file:line``, its text never reaches the client, and
  only that command is refused; the session goes on. At RCPT the relay check
  (``smtp/relay.py``) comes before the handler, as in KumoMTA: a peer in ``relay_hosts``, one
  that authenticated, or one the listener domains let through may relay; the others get
  ``550 5.7.1`` and the handler is not called. An AUTH the handler refuses gets ``535 5.7.8``
  and counts against the client IP in ``Admission`` (``auth_failed``).

Every 4xx/5xx reply is reported to ``SmtpHandler.rejected`` (Rejection records).

Imports: asyncio, kumoq.smtp.session/replies/handler/relay/eager/admission,
kumoq.config.listener, kumoq.message, kumoq.errors. Must not import kumoq.smtp.connection or
kumoq.smtp.server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import PolicyError, RejectError
from kumoq.message import EnvelopeAddress
from kumoq.smtp import replies as R
from kumoq.smtp.admission import Admission, ClientLimits
from kumoq.smtp.eager import bounded, drive_suspended
from kumoq.smtp.handler import ListenerDomains, SmtpHandler
from kumoq.smtp.relay import RelayCheck, SessionMeta
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import Auth, Ehlo, MailFrom, MessageData, RcptTo, ServerSession

__all__ = ["CallOwner", "Decided", "HandlerCalls"]

log = logging.getLogger("kumoq.smtp.server")  # one logger for the listener and its connections

_T = TypeVar("_T")
# isinstance() against a runtime-checkable Protocol inspects the class each time (~5 µs, once
# per connection); the answer depends only on the handler's class.
_OFFERS_DOMAINS: dict[type, bool] = {}
Decided = Ehlo | MailFrom | RcptTo | Auth
"""The events a handler coroutine decides, stepped eagerly."""


class CallOwner(Protocol):
    """What the handler calls need of the listener that accepted the connection."""

    @property
    def config(self) -> EsmtpListenerConfig: ...

    @property
    def handler(self) -> SmtpHandler: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """For STARTTLS (offered when there is one)."""
        ...


class HandlerCalls(ABC):
    """The handler side of a connection (see the module docstring). The transport side
    provides ``_close`` and ``_handler_done``."""

    __slots__ = (
        "_busy",
        "_conn",
        "_limits",
        "_listener",
        "_out",
        "_peer",
        "_relay_ok",
        "_session",
        "task",
    )

    def __init__(self, listener: CallOwner) -> None:
        self._listener = listener
        self._session = ServerSession(listener.config, tls=listener.tls_context is not None)
        self._conn = conn = SessionMeta()
        handler = listener.handler
        offers = _OFFERS_DOMAINS.get(type(handler))
        if offers is None:
            offers = _OFFERS_DOMAINS[type(handler)] = isinstance(handler, ListenerDomains)
        domains = cast("ListenerDomains", handler) if offers else None
        conn.relay = RelayCheck(conn, self._relay_trusted, domains)
        self._out: list[bytes] = []
        self._busy = False  # a handler call is in progress in ``task``
        self._peer = ""
        self._relay_ok = False
        self._limits = ClientLimits(listener.admission)
        self.task: asyncio.Task[None] | None = None

    # --- provided by the transport side --------------------------------------------------------
    @abstractmethod
    def _close(self) -> None:
        """Write what is queued, close the session and the transport."""

    @abstractmethod
    def _handler_done(self) -> None:
        """A handler task ended (or was cancelled): carry on with buffered input, or finish."""

    # --- handler calls -------------------------------------------------------------------------
    def _step(self, coro: Coroutine[Any, Any, Any], event: Decided) -> bool:
        """Run a handler coroutine eagerly; True when it finished (and was answered), False
        when it suspended and continues in a task that resumes ``_process`` afterwards."""
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._complete(event, stop.value)
            return True
        except RejectError as exc:
            return self._reject(exc)
        except Exception:
            self._failed("SmtpHandler failed on %r from %s", event, self._peer)
            return True
        self._busy = True
        self.task = self._listener.loop.create_task(self._resume(coro, yielded, event))
        return False

    async def _resume(self, coro: Coroutine[Any, Any, Any], yielded: Any, event: Decided) -> None:
        """Finish a suspended handler coroutine inside this task, then carry on."""
        await self._settle(
            drive_suspended(coro, yielded),
            lambda result: self._complete(event, result),
            "SmtpHandler failed on %r from %s",
            event,
            self._peer,
        )

    def _relay_trusted(self) -> bool:
        """The peer may relay anywhere: in ``relay_hosts``, or authenticated (kumoq's rule)."""
        return self._relay_ok or self._session.authenticated

    async def _rcpt_to(self, recipient: EnvelopeAddress) -> Reply | None:
        """The relay check, then (when it passes) the handler's ``rcpt_to``."""
        sender = self._session.sender
        assert sender is not None  # the session yields RcptTo only after MAIL FROM
        conn = self._conn
        if not (await conn.relay.disposition(sender, recipient)).accept_rcpt_to:
            return R.relaying_denied(self._peer)
        return await self._listener.handler.rcpt_to(conn, recipient)

    async def _run_data(self, event: MessageData) -> None:
        await self._settle(
            self._call_data(event), self._answer, "SmtpHandler.data failed for %s", self._peer
        )

    async def _call_data(self, event: MessageData) -> Reply:
        """``SmtpHandler.data``, or ``451 4.4.5`` once ``data_processing_timeout`` passed."""
        listener = self._listener
        call = listener.handler.data(self._conn, event.sender, list(event.recipients), event.data)
        timeout = listener.config.data_processing_timeout
        return await bounded(call, timeout, R.DATA_PROCESSING_TIMEOUT, listener.loop)

    async def _settle(
        self, call: Awaitable[_T], done: Callable[[_T], None], failure: str, *args: object
    ) -> None:
        """Await a handler call running in ``task`` and answer its outcome: ``done(result)``,
        a ``RejectError``'s reply, or 451 technical difficulties (logging ``failure % args``)
        for any other exception. Cancelled: the session closes. Then ``_handler_done``."""
        try:
            try:
                result = await call
            except asyncio.CancelledError:
                self._session.close()  # aborted: do not go on reading commands
                raise
            except RejectError as exc:
                self._reject(exc)
            except Exception:
                self._failed(failure, *args)
            else:
                done(result)
        finally:
            self._handler_done()

    # --- outcomes ------------------------------------------------------------------------------
    def _complete(self, event: Decided, result: Any) -> None:
        session = self._session
        cls = type(event)
        if cls is Ehlo:
            assert isinstance(event, Ehlo)
            if isinstance(result, Reply):
                self._answer(result)
            else:
                self._out.append(session.accept(result))
                self._conn["ehlo_domain"] = event.domain
        elif cls is Auth:
            if result is True:
                self._out.append(session.accept())  # 235; the handler recorded the identity
            else:
                self._listener.admission.auth_failed(self._limits.ip, self._listener.loop.time())
                self._answer(R.AUTH_INVALID)
        elif result is not None and result.code >= 400:
            self._answer(result)
        elif result is None:
            self._out.append(session.accept())
        else:
            self._answer(result)

    def _failed(self, message: str, *args: object) -> None:
        """A handler call raised something other than ``RejectError``: log it (a policy error
        by its text and ``file:line``; anything else with its traceback) and
        answer the generic ``451 4.3.0``. Unlike KumoMTA (421 and a hang-up), the session
        stays open: the refused command leaves it in a state it knows how to go on from."""
        exc = sys.exc_info()[1]
        if isinstance(exc, PolicyError):
            text, where = str(exc), exc.location
            log.error(
                message + ": %s", *args, text if not where or where in text else f"{where}: {text}"
            )
        else:
            log.exception(message, *args)
        self._answer(R.policy_failed(self._listener.config.hostname))

    def _reject(self, exc: RejectError) -> bool:
        """Answer ``kumo.reject``; False when the connection must be dropped."""
        self._answer(Reply.from_text(exc.code, exc.reply_text))
        if exc.follow_with_421 and not self._session.closed:  # as KumoMTA: not a rejection
            self._out.append(
                self._session.send(R.disconnecting_after_error(self._listener.config.hostname))
            )
        if exc.disconnect or self._session.closed:
            self._close()
            return False
        return True

    def _answer(self, reply: Reply) -> None:
        session = self._session
        if reply.code >= 400:
            self._rejected(session.command, reply)
        self._out.append(session.send(reply))  # a 421 closes the session

    def _rejected(self, command: str, reply: Reply) -> None:
        try:
            self._listener.handler.rejected(self._conn, command, reply)
        except Exception:
            log.exception("SmtpHandler.rejected() failed")
