"""Outbound SMTP: one client session to one host (reference §1.9, §2.3, §3.3, §5).

``SmtpClientSession.connect()`` opens a connection (bound to the egress source's address when
set), reads the banner, sends EHLO and applies ``enable_tls``; ``deliver()`` runs one
transaction per message and classifies every recipient's reply as KumoMTA's
``classify_record`` does. Expected failures are return values (``ConnectFailure``, per-recipient
``TransientFailure``/``Bounce``), never exceptions.

Commands are sent one at a time (no PIPELINING): aiosmtplib's ``SMTPProtocol`` pairs one
``read_response()`` with each write and drops replies that arrive unasked. Each command is
bounded by its own ``*_timeout`` from the egress path.

L2: asyncio + aiosmtplib. Imports kumoq.config, kumoq.logs.records and kumoq.message; must not
import the policy bridge (kumoq.lua), the queues or the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from aiosmtplib import SMTPException, SMTPResponse, SMTPResponseException
from aiosmtplib.protocol import SMTPProtocol

from kumoq.config.egress import Tls
from kumoq.errors import LocalProtocolError
from kumoq.logs.records import PeerAddress, RecordType, Response
from kumoq.message import new_session_id

if TYPE_CHECKING:
    from kumoq.config.egress import EgressPathConfig, EgressSource
    from kumoq.message import EnvelopeAddress, Message

__all__ = [
    "ConnectFailure",
    "DeliveryOutcome",
    "RecipientOutcome",
    "SmtpClientSession",
    "TlsInfo",
    "classify",
]

_DOT_STUFF: Final = re.compile(rb"(?m)^\.")
_TLS_VERIFY: Final = frozenset({Tls.OPPORTUNISTIC, Tls.REQUIRED})
_TLS_REQUIRED: Final = frozenset({Tls.REQUIRED, Tls.REQUIRED_INSECURE})
_contexts: dict[bool, ssl.SSLContext] = {}


def _default_context(verify: bool) -> ssl.SSLContext:
    """One shared client context per mode (loading the CA store costs milliseconds)."""
    ctx = _contexts.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[verify] = ctx
    return ctx


def classify(response: Response) -> RecordType:
    """2xx: Delivery; 3xx, 4xx, 503 or "too many recipients": TransientFailure; else Bounce."""
    code = response.code
    if 200 <= code < 300:
        return RecordType.Delivery
    if code < 500 or code == 503 or "too many recipients" in response.content.lower():
        return RecordType.TransientFailure
    return RecordType.Bounce


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """This host could not be used; the caller tries the next one (or transfails the batch)."""

    reason: str
    transient: bool = True
    response: Response | None = None


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The negotiated TLS parameters (Python/OpenSSL names, e.g. ``TLSv1.3``)."""

    cipher: str
    protocol_version: str
    peer_subject_name: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    recipient: EnvelopeAddress
    disposition: RecordType
    response: Response


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of one transaction: one entry per recipient, in envelope order."""

    recipients: tuple[RecipientOutcome, ...]
    peer: PeerAddress
    source_address: str
    tls: TlsInfo | None
    session_id: str


class _TransportError(Exception):
    """Internal: the connection broke or a command timed out; the session is unusable."""


class SmtpClientSession:
    """One outbound SMTP connection. Create with ``await SmtpClientSession.connect(...)``."""

    __slots__ = (
        "_lost",
        "_protocol",
        "_transactions",
        "closed",
        "extensions",
        "path",
        "peer",
        "session_id",
        "source_address",
        "tls",
    )

    def __init__(
        self,
        protocol: SMTPProtocol,
        lost: asyncio.Event,
        peer: PeerAddress,
        path: EgressPathConfig,
        local: str,
    ) -> None:
        self._protocol = protocol
        self._lost = lost
        self._transactions = 0
        self.closed = False
        self.extensions: frozenset[str] = frozenset()
        self.path = path
        self.peer = peer
        self.session_id = new_session_id()
        self.source_address = local
        self.tls: TlsInfo | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        addr: str,
        port: int,
        *,
        path: EgressPathConfig,
        source: EgressSource,
        ehlo_domain: str,
        tls_context: ssl.SSLContext | None = None,
    ) -> SmtpClientSession | ConnectFailure:
        """Connect, read the banner, EHLO and apply ``path.enable_tls``.

        ``ehlo_domain`` is already resolved by the caller (path > source > hostname).
        ``tls_context`` replaces the verifying default context (tests trust their own CA).
        """
        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        protocol = SMTPProtocol(loop=loop, connection_lost_callback=lambda _p: lost.set())
        local_addr = (source.source_address, 0) if source.source_address else None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: protocol, addr, port, local_addr=local_addr),
                path.connect_timeout,
            )
        except TimeoutError:
            return ConnectFailure(f"timed out connecting to {host} {addr}:{port}")
        except OSError as exc:
            return ConnectFailure(f"failed to connect to {host} {addr}:{port}: {exc}")
        sockname = transport.get_extra_info("sockname")
        local = f"{sockname[0]}:{sockname[1]}" if sockname else ""
        session = cls(protocol, lost, PeerAddress(host, addr), path, local)
        try:
            failure = await session._handshake(host, ehlo_domain, tls_context)
        except _TransportError as exc:
            failure = ConnectFailure(f"{host} {addr}:{port}: {exc}")
        if failure is not None:
            session.abort()
        return failure or session

    async def _handshake(
        self, host: str, ehlo_domain: str, tls_context: ssl.SSLContext | None
    ) -> ConnectFailure | None:
        path = self.path
        banner = await self._command(None, path.banner_timeout)
        if banner.code != 220:
            return ConnectFailure(f"unexpected banner from {host}", response=banner)
        failure = await self._ehlo(ehlo_domain)
        if failure is not None:
            return failure
        mode = path.enable_tls
        if mode is Tls.DISABLED:
            return None
        if "starttls" not in self.extensions:
            if mode in _TLS_REQUIRED:
                return ConnectFailure(f"{host} does not offer STARTTLS and enable_tls={mode}")
            return None
        verify = mode in _TLS_VERIFY
        ctx = tls_context if verify and tls_context is not None else _default_context(verify)
        try:
            await self._protocol.start_tls(ctx, server_hostname=host, timeout=path.starttls_timeout)
        except SMTPException as exc:
            if isinstance(exc, SMTPResponseException):
                return ConnectFailure(
                    f"STARTTLS refused by {host}",
                    response=Response.from_reply(exc.code, exc.message, "STARTTLS\r\n"),
                )
            return ConnectFailure(f"TLS handshake with {host} failed: {exc}")
        except (ssl.SSLError, OSError) as exc:
            return ConnectFailure(f"TLS handshake with {host} failed: {exc}")
        transport = self._protocol.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is not None:
            cipher = sslobj.cipher()
            cert = sslobj.getpeercert() if verify else None
            subject = None
            if cert:
                names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
                names += [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
                subject = tuple(names)
            self.tls = TlsInfo(cipher[0] if cipher else "", sslobj.version() or "", subject)
        return await self._ehlo(ehlo_domain)

    async def _ehlo(self, ehlo_domain: str) -> ConnectFailure | None:
        reply = await self._command(f"EHLO {ehlo_domain}\r\n", self.path.ehlo_timeout)
        if reply.code != 250:
            return ConnectFailure(f"EHLO rejected by {self.peer.name}", response=reply)
        return None

    async def _command(self, line: str | None, limit: float) -> Response:
        """Send ``line`` (``None``: just read, for the banner) and read one reply."""
        protocol = self._protocol
        if line is not None and ("\r" in line[:-2] or "\n" in line[:-2]):
            raise LocalProtocolError(f"refusing to send a command containing CR/LF: {line!r}")
        try:
            if line is not None:
                protocol.write(line.encode())
            raw: SMTPResponse = await protocol.read_response(timeout=limit)
        except SMTPException as exc:
            self.closed = True
            raise _TransportError(str(exc)) from exc
        if line is not None and line.startswith("EHLO "):
            self._parse_extensions(raw.message)
        response = Response.from_reply(raw.code, raw.message, line)
        if raw.code == 421:
            self.closed = True
        return response

    def _parse_extensions(self, text: str) -> None:
        lines = text.split("\n")[1:]
        self.extensions = frozenset(ln.split(" ", 1)[0].strip().lower() for ln in lines if ln)

    async def deliver(self, msg: Message) -> DeliveryOutcome:
        """One transaction for ``msg``: RSET (when reusing), MAIL, RCPT per recipient, DATA."""
        results: dict[int, tuple[RecordType, Response]] = {}
        try:
            await self._transaction(msg, results)
        except _TransportError as exc:
            failed = Response(
                400,
                None,
                f"KumoMTA internal: failed to send message to {self.peer.name} "
                f"{self.peer.addr}: {exc}",
                None,
            )
            for i in range(len(msg.recipients)):
                results.setdefault(i, (RecordType.TransientFailure, failed))
        if self.closed:
            self.abort()
        return DeliveryOutcome(
            tuple(RecipientOutcome(rcpt, *results[i]) for i, rcpt in enumerate(msg.recipients)),
            self.peer,
            self.source_address,
            self.tls,
            self.session_id,
        )

    async def _transaction(
        self, msg: Message, results: dict[int, tuple[RecordType, Response]]
    ) -> None:
        path = self.path
        recipients = msg.recipients
        if self.closed:
            raise _TransportError("session is closed")
        if self._transactions:
            rset = await self._command("RSET\r\n", path.rset_timeout)
            if rset.code != 250:
                self.closed = True
                raise _TransportError(f"RSET failed: {rset}")
        self._transactions += 1

        def settle_all(indexes: list[int] | range, response: Response) -> None:
            disposition = classify(response)
            for i in indexes:
                results[i] = (disposition, response)

        reply = await self._command(f"MAIL FROM:<{msg.sender.email}>\r\n", path.mail_from_timeout)
        if reply.code != 250:
            settle_all(range(len(recipients)), reply)
            return
        accepted: list[int] = []
        for i, rcpt in enumerate(recipients):
            reply = await self._command(f"RCPT TO:<{rcpt.email}>\r\n", path.rcpt_to_timeout)
            if reply.code in (250, 251):
                accepted.append(i)
            else:
                results[i] = (classify(reply), reply)
                if reply.code == 421:
                    settle_all(range(i + 1, len(recipients)), reply)
                    settle_all(accepted, reply)
                    return
        if not accepted:
            return
        reply = await self._command("DATA\r\n", path.data_timeout)
        if reply.code != 354:
            settle_all(accepted, reply)
            return
        data = msg.data or b""
        body = _DOT_STUFF.sub(b"..", data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            self._protocol.write(body)
        except SMTPException as exc:
            self.closed = True
            raise _TransportError(str(exc)) from exc
        reply = await self._command(".\r\n", path.data_dot_timeout)
        settle_all(accepted, reply)

    async def quit(self) -> None:
        """Send QUIT (bounded by ``rset_timeout``) unless closed, then close the connection."""
        if not self.closed:
            with contextlib.suppress(_TransportError):
                await self._command("QUIT\r\n", self.path.rset_timeout)
            self.closed = True
        await self._close_transport()

    def abort(self) -> None:
        """Drop the connection now, without QUIT."""
        self.closed = True
        transport = self._protocol.transport
        if transport is not None:
            transport.close()

    async def _close_transport(self) -> None:
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        if transport is not None:
            try:
                await asyncio.wait_for(self._lost.wait(), self.path.rset_timeout)
            except TimeoutError:
                cast("asyncio.Transport", transport).abort()
