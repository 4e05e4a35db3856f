"""Outbound SMTP: one client session to one host (reference §1.9, §2.3, §3.3, §5).

``SmtpClientSession.connect()`` opens a connection (bound to the egress source's address when
set), reads the banner, sends EHLO and applies ``enable_tls``; ``deliver()`` runs one
transaction per message and classifies every recipient's reply as KumoMTA's
``classify_record`` does. Expected failures are return values (``ConnectFailure``, per-recipient
``TransientFailure``/``Bounce``), never exceptions.

When the server offers PIPELINING (RFC 2920) and ``enable_pipelining`` is true, a transaction
is two writes: ``RSET`` (on a reused connection, unless ``enable_rset`` is false), ``MAIL``,
every ``RCPT`` and ``DATA`` together, then the body with its final dot. Otherwise each command
waits for its reply. Either way each reply is bounded by its command's own ``*_timeout`` from the
egress path, and is read by ``ClientConnection``
(kumoq.delivery.client_connection), which keeps replies that arrive together.

Only the reply to the body's final dot can make a ``Delivery``. A positive reply a command
cannot get (RFC 5321 §4.3.2: MAIL 250; RCPT 250 or 251; DATA 354; RSET 250), such as a 251 to
MAIL or a 250 to DATA, is a protocol violation: every recipient not refused by its own reply
gets a ``TransientFailure`` (451 4.5.0) and the connection is dropped without a final dot.

L2: asyncio. Imports kumoq.config, kumoq.logs.records, kumoq.message and kumoq.smtp's reply
reader; must not import the policy bridge (kumoq.lua), the queues or the daemon.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from kumoq.config.egress import Tls
from kumoq.delivery.client_connection import ClientConnection, ConnectionBroken
from kumoq.delivery.reply_reader import ServerReply
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

# A dot at the start of a line, where a bare CR or LF also starts one: a downstream server that
# takes them as line ends must never read the content as an end of data (docs/security.md).
_DOT_STUFF: Final = re.compile(rb"(?:\A|(?<=[\r\n]))\.")
_DOTS_LOOKED_AT: Final = 16
_LINE_BREAKS: Final = frozenset(b"\r\n")
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


_POSITIVE: Final = {"RSET": (250,), "MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
"""The only positive replies each command may get (RFC 5321 §4.3.2); any other reply below
400 is a protocol violation. Only the reply after the body's final dot can make a Delivery."""


def _dot_starts_a_line(data: bytes) -> bool:
    """Whether ``data`` needs dot-stuffing: a dot at its start or after a CR or LF.

    Most bodies have no such dot, and finding none costs less than the regex. The dots are
    found with ``find`` (memchr) and what precedes each is checked; past ``_DOTS_LOOKED_AT``
    dots (prose) two substring searches answer instead. Those alone cost more for the usual
    body: CPython scans for a two-byte needle byte by byte, about 4 us per search of 4 KB."""
    if data[:1] == b".":
        return True
    at = data.find(b".", 1)
    for _ in range(_DOTS_LOOKED_AT):
        if at < 0:
            return False
        if data[at - 1] in _LINE_BREAKS:
            return True
        at = data.find(b".", at + 1)
    return b"\n." in data or b"\r." in data


def _violated(verb: str, code: int) -> str | None:
    """What ``verb`` should have got, when ``code`` is a positive reply it cannot get."""
    allowed = _POSITIVE[verb]
    if code < 400 and code not in allowed:
        return " or ".join(map(str, allowed))
    return None


class _TransportError(Exception):
    """Internal: the connection broke or a command timed out; the session is unusable."""


class SmtpClientSession:
    """One outbound SMTP connection. Create with ``await SmtpClientSession.connect(...)``."""

    __slots__ = (
        "_conn",
        "_transactions",
        "closed",
        "extensions",
        "path",
        "peer",
        "session_id",
        "source_address",
        "tls",
    )

    def __init__(self, conn: ClientConnection, peer: PeerAddress, path: EgressPathConfig) -> None:
        self._conn = conn
        self._transactions = 0
        self.closed = False
        self.extensions: frozenset[str] = frozenset()
        self.path = path
        self.peer = peer
        self.session_id = new_session_id()
        self.source_address = conn.local_address
        self.tls: TlsInfo | None = None

    @property
    def reusable(self) -> bool:
        """Not closed, and the server has not hung up (or spoken unasked) since the last
        transaction: the next message may use this session."""
        return not self.closed and self._conn.idle

    @property
    def pipelining(self) -> bool:
        """True when the server offered PIPELINING (RFC 2920) and the path allows it."""
        return self.path.enable_pipelining and "pipelining" in self.extensions

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
        local_addr = (source.source_address, 0) if source.source_address else None
        try:
            conn = await ClientConnection.open(
                addr, port, local_addr=local_addr, deadline=path.connect_timeout
            )
        except TimeoutError:
            return ConnectFailure(f"timed out connecting to {host} {addr}:{port}")
        except OSError as exc:
            return ConnectFailure(f"failed to connect to {host} {addr}:{port}: {exc}")
        session = cls(conn, PeerAddress(host, addr), path)
        try:
            failure = await session._handshake(host, ehlo_domain, tls_context)
        except _TransportError as exc:
            failure = ConnectFailure(f"{host} {addr}:{port}: {exc}")
        except BaseException:  # cancelled (shutdown) or a bug: never leave the socket open
            session.abort()
            raise
        if failure is not None:
            session.abort()
        return failure or session

    async def _handshake(
        self, host: str, ehlo_domain: str, tls_context: ssl.SSLContext | None
    ) -> ConnectFailure | None:
        path = self.path
        banner = await self._read(None, path.banner_timeout)
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
        reply = await self._command("STARTTLS\r\n", path.starttls_timeout)
        if reply.code != 220:
            return ConnectFailure(f"STARTTLS refused by {host}", response=reply)
        verify = mode in _TLS_VERIFY
        ctx = tls_context if verify and tls_context is not None else _default_context(verify)
        try:
            await self._conn.start_tls(ctx, host, path.starttls_timeout)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionBroken) as exc:
            return ConnectFailure(
                f"TLS handshake with {host} failed: {str(exc) or type(exc).__name__}"
            )
        sslobj = self._conn.ssl_object
        if sslobj is not None:
            cipher = sslobj.cipher()
            cert = cast("dict[str, Any] | None", sslobj.getpeercert()) if verify else None
            subject = None
            if cert:
                names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
                names += [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
                subject = tuple(names)
            self.tls = TlsInfo(cipher[0] if cipher else "", sslobj.version() or "", subject)
        self.extensions = frozenset()
        return await self._ehlo(ehlo_domain)

    async def _ehlo(self, ehlo_domain: str) -> ConnectFailure | None:
        reply = await self._command(f"EHLO {ehlo_domain}\r\n", self.path.ehlo_timeout)
        if reply.code != 250:
            return ConnectFailure(f"EHLO rejected by {self.peer.name}", response=reply)
        return None

    def _send(self, *lines: str) -> None:
        """Write ``lines`` in one go (one command, or a PIPELINING group)."""
        for line in lines:
            if "\r" in line[:-2] or "\n" in line[:-2]:
                raise LocalProtocolError(f"refusing to send a command containing CR/LF: {line!r}")
        try:
            self._conn.write("".join(lines).encode())
        except ConnectionBroken as exc:
            self.closed = True
            raise _TransportError(str(exc)) from exc

    async def _reply(self, limit: float) -> ServerReply:
        """Read the next reply; a 421 marks the session closed."""
        try:
            reply = await self._conn.read_reply(limit)
        except ConnectionBroken as exc:
            self.closed = True
            raise _TransportError(str(exc)) from exc
        if reply.code == 421:
            self.closed = True
        return reply

    async def _read(self, line: str | None, limit: float) -> Response:
        """Read the reply to ``line`` (already sent; ``None`` for the banner) as a Response."""
        reply = await self._reply(limit)
        if line is not None and line.startswith("EHLO "):
            self.extensions = frozenset(
                ln.split(" ", 1)[0].strip().lower() for ln in reply.lines[1:] if ln
            )
        return Response.from_reply(reply.code, reply.lines, line)

    async def _command(self, line: str, limit: float) -> Response:
        self._send(line)
        return await self._read(line, limit)

    async def deliver(self, msg: Message) -> DeliveryOutcome:
        """One transaction for ``msg``: RSET (when reusing, unless ``enable_rset`` is false), MAIL,
        RCPT per recipient, DATA.

        With PIPELINING the envelope commands up to DATA go out in one write (RFC 2920 §3.1)
        and the body with its final dot in a second; otherwise each command waits for its reply.
        """
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
        commands: list[tuple[str, str, float]] = []
        if self._transactions and path.enable_rset:
            commands.append(("RSET", "RSET\r\n", path.rset_timeout))
        self._transactions += 1
        commands.append(("MAIL", f"MAIL FROM:<{msg.sender.email}>\r\n", path.mail_from_timeout))
        commands += [("RCPT", f"RCPT TO:<{r.email}>\r\n", path.rcpt_to_timeout) for r in recipients]
        commands.append(("DATA", "DATA\r\n", path.data_timeout))
        pipelined = self.pipelining
        if pipelined:
            self._send(*(line for _, line, _ in commands))
        envelope = _Envelope(len(recipients))
        for verb, line, limit in commands:
            if not pipelined:
                if envelope.done:
                    return
                self._send(line)
            # A Response (regex, join) is built only for a reply that decides an outcome.
            reply = await self._reply(limit)
            code = reply.code
            if code == 421:
                envelope.settle_all(results, Response.from_reply(code, reply.lines, line))
                return
            expected = _violated(verb, code)
            if expected is not None:
                # Nothing the server said after this can be trusted: the message was not
                # handed over. Drop the connection (no lone dot that could end a message).
                envelope.settle_all(results, self._violation(verb, reply, line, expected))
                self.closed = True
                return
            if verb == "RSET":
                if code != 250:
                    self.closed = True
                    raise _TransportError(f"RSET failed: {code} {reply.text}")
            elif verb == "MAIL":
                if code != 250:
                    envelope.mail_refused(results, Response.from_reply(code, reply.lines, line))
            elif verb == "RCPT":
                if code < 400:  # 250 or 251 (any other positive reply is a violation)
                    envelope.rcpt_accepted()
                else:
                    envelope.rcpt_refused(results, Response.from_reply(code, reply.lines, line))
            elif code == 354 and envelope.accepted and not envelope.done:
                await self._send_body(msg, results, envelope)
            elif code == 354:
                # RFC 2920: DATA went out pipelined but no recipient was accepted; end the
                # (empty) message, and leave the recipients with their own replies.
                await self._command(".\r\n", path.data_dot_timeout)
            else:
                envelope.data_refused(results, Response.from_reply(code, reply.lines, line))

    def _violation(self, verb: str, reply: ServerReply, line: str, expected: str) -> Response:
        """The transient response kumoq records when the server broke the protocol."""
        said = f"{reply.code} {' '.join(reply.lines)}".strip()
        return Response(
            451,
            (4, 5, 0),
            f"KumoMTA internal: protocol violation by {self.peer.name} {self.peer.addr}: "
            f"{verb} got '{said}', expected {expected}; the message was not sent",
            line,
        )

    async def _send_body(
        self, msg: Message, results: dict[int, tuple[RecordType, Response]], envelope: _Envelope
    ) -> None:
        data = msg.data or b""
        body = _DOT_STUFF.sub(b"..", data) if _dot_starts_a_line(data) else data
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            self._conn.write(body + b".\r\n")
        except ConnectionBroken as exc:
            self.closed = True
            raise _TransportError(str(exc)) from exc
        reply = await self._read(".\r\n", self.path.data_dot_timeout)
        envelope.settle_accepted(results, reply)

    async def quit(self) -> None:
        """Send QUIT (bounded by ``rset_timeout``) unless closed, then close the connection."""
        if not self.closed:
            with contextlib.suppress(_TransportError):
                await self._command("QUIT\r\n", self.path.rset_timeout)
            self.closed = True
        await self._conn.close(self.path.rset_timeout)

    def abort(self) -> None:
        """Drop the connection now, without QUIT."""
        self.closed = True
        self._conn.abort()


class _Envelope:
    """Bookkeeping for one transaction's replies: who was accepted, and who is settled."""

    __slots__ = ("accepted", "count", "done", "next_rcpt")

    def __init__(self, count: int) -> None:
        self.count = count
        self.accepted: list[int] = []
        self.next_rcpt = 0
        self.done = False  # the outcome is known for every recipient; later replies are moot

    def settle_all(self, results: dict[int, tuple[RecordType, Response]], reply: Response) -> None:
        """Every recipient not yet settled (a 421: the session is over)."""
        disposition = classify(reply)
        for i in range(self.count):
            if i not in results or i in self.accepted:
                results[i] = (disposition, reply)
        self.done = True

    def mail_refused(
        self, results: dict[int, tuple[RecordType, Response]], reply: Response
    ) -> None:
        disposition = classify(reply)
        for i in range(self.count):
            results[i] = (disposition, reply)
        self.done = True

    def rcpt_accepted(self) -> None:
        i = self.next_rcpt
        self.next_rcpt += 1
        if not self.done:
            self.accepted.append(i)

    def rcpt_refused(
        self, results: dict[int, tuple[RecordType, Response]], reply: Response
    ) -> None:
        i = self.next_rcpt
        self.next_rcpt += 1
        if self.done:
            return
        results[i] = (classify(reply), reply)
        if self.next_rcpt == self.count and not self.accepted:
            self.done = True

    def data_refused(
        self, results: dict[int, tuple[RecordType, Response]], reply: Response
    ) -> None:
        if not self.done:
            self.settle_accepted(results, reply)

    def settle_accepted(
        self, results: dict[int, tuple[RecordType, Response]], reply: Response
    ) -> None:
        disposition = classify(reply)
        for i in self.accepted:
            results[i] = (disposition, reply)
        self.done = True
