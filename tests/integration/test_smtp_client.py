"""kumoq.delivery.smtp against an aiosmtpd sink on 127.0.0.1 (real sockets, real TLS via trustme).

The sink runs in the test's own event loop (``loop.create_server`` with aiosmtpd's ``SMTP``
protocol), so no thread is involved. Recipient local parts choose the sink's answer:
``tempfail`` 450, ``permfail`` 550, ``toomany`` 552 "too many recipients", ``421-...`` 421.

Tests against hand-written raw servers (connect failures, wire-level pipelining) are in
test_smtp_client_raw_servers.py; the shared helpers in smtp_client_support.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from kumoq.config.egress import Tls
from kumoq.delivery.smtp import ConnectFailure, SmtpClientSession, classify
from kumoq.logs.records import PeerAddress, RecordType, Response
from kumoq.message import EnvelopeAddress
from tests.integration.smtp_client_support import BODY, connect, message

pytestmark = pytest.mark.integration


class Sink:
    """aiosmtpd handler recording messages and the connection each arrived on."""

    def __init__(self, pipelining: bool = False) -> None:
        self.messages: list[tuple[int, str, list[str], bytes]] = []
        self.sessions: list[int] = []
        self.mail_gate: asyncio.Event | None = None
        self.tls_seen: list[bool] = []
        self.pipelining = pipelining

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads pipelined commands fine but does not say so
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.mail_gate is not None:
            await self.mail_gate.wait()
        if address.startswith("badsender@"):
            return "550 5.7.1 sender refused"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        local = address.split("@", 1)[0]
        if local == "tempfail":
            return "450 4.2.0 mailbox busy"
        if local == "permfail":
            return "550 5.1.1 no such user"
        if local == "toomany":
            return "552 5.5.3 too many recipients"
        if local.startswith("421-"):
            return "421 4.3.2 going away"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if id(session) not in self.sessions:
            self.sessions.append(id(session))
        self.tls_seen.append(session.ssl is not None)
        self.messages.append(
            (id(session), envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 queued as 42"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


StartSink = Callable[..., Any]


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Every sink test runs against a sink that offers PIPELINING and one that does not."""
    return bool(request.param)


@pytest.fixture
async def start_sink(pipelining: bool) -> AsyncIterator[StartSink]:
    servers: list[asyncio.Server] = []
    sinks: list[Sink] = []

    async def start(tls: ssl.SSLContext | None = None) -> tuple[Sink, int]:
        sink = Sink(pipelining)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(sink, hostname="mx.test", tls_context=tls, require_starttls=False),
            "127.0.0.1",
            0,
        )
        servers.append(server)
        sinks.append(sink)
        return sink, server.sockets[0].getsockname()[1]

    yield start
    for sink in sinks:
        if sink.mail_gate is not None:
            sink.mail_gate.set()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.05)  # let aiosmtpd's connection tasks see the close


def test_classify() -> None:
    assert classify(Response(250, None, "ok")) is RecordType.Delivery
    assert classify(Response(354, None, "go")) is RecordType.TransientFailure
    assert classify(Response(451, None, "later")) is RecordType.TransientFailure
    assert classify(Response(503, None, "bad sequence")) is RecordType.TransientFailure
    assert classify(Response(552, None, "Too many recipients")) is RecordType.TransientFailure
    assert classify(Response(550, None, "no")) is RecordType.Bounce


async def test_two_messages_one_session(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    assert session.source_address.startswith("127.0.0.1:")
    assert session.pipelining is sink.pipelining
    first = await session.deliver(message("a@example.com"))
    second = await session.deliver(message("b@example.com", sender=""))
    await session.quit()
    assert session.closed
    for outcome, rcpt in ((first, "a@example.com"), (second, "b@example.com")):
        (r,) = outcome.recipients
        assert r.recipient == EnvelopeAddress.parse(rcpt)
        assert r.disposition is RecordType.Delivery
        assert r.response == Response(250, (2, 0, 0), "queued as 42", ".\r\n")
        assert outcome.peer == PeerAddress("localhost", "127.0.0.1")
        assert outcome.session_id == session.session_id
        assert outcome.tls is None
    assert len(session.session_id) == 32
    assert len(sink.messages) == 2
    assert len(sink.sessions) == 1
    assert sink.messages[0][1:3] == ("from@example.com", ["a@example.com"])
    assert sink.messages[1][1:3] == ("<>", ["b@example.com"])
    assert sink.messages[0][3] == BODY


async def test_per_recipient_outcomes(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    outcome = await session.deliver(
        message("ok@example.com", "tempfail@example.com", "permfail@example.com", "toomany@x.org")
    )
    got = {str(r.recipient): (r.disposition, r.response) for r in outcome.recipients}
    assert got["ok@example.com"][0] is RecordType.Delivery
    assert got["tempfail@example.com"] == (
        RecordType.TransientFailure,
        Response(450, (4, 2, 0), "mailbox busy", "RCPT TO:<tempfail@example.com>\r\n"),
    )
    assert got["permfail@example.com"] == (
        RecordType.Bounce,
        Response(550, (5, 1, 1), "no such user", "RCPT TO:<permfail@example.com>\r\n"),
    )
    assert got["toomany@x.org"][0] is RecordType.TransientFailure
    assert not session.closed
    assert [m[2] for m in sink.messages] == [["ok@example.com"]]
    await session.quit()


async def test_421_closes_session(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    outcome = await session.deliver(
        message("ok@example.com", "421-x@example.com", "late@example.com")
    )
    dispositions = [r.disposition for r in outcome.recipients]
    assert dispositions == [RecordType.TransientFailure] * 3
    assert all(r.response.code == 421 for r in outcome.recipients)
    assert session.closed
    assert sink.messages == []
    after = await session.deliver(message("ok@example.com"))
    assert after.recipients[0].disposition is RecordType.TransientFailure
    assert after.recipients[0].response.code == 400
    await session.quit()


async def test_opportunistic_tls_trusted(
    start_sink: StartSink, server_tls: ssl.SSLContext, trusting: ssl.SSLContext
) -> None:
    sink, port = await start_sink(server_tls)
    session = await connect(port, trusting, enable_tls=Tls.OPPORTUNISTIC)
    assert isinstance(session, SmtpClientSession), session
    assert session.tls is not None
    assert session.tls.protocol_version.startswith("TLS")
    assert session.tls.cipher
    assert session.tls.peer_subject_name == ("localhost",)
    outcome = await session.deliver(message("a@example.com"))
    assert outcome.tls == session.tls
    assert outcome.recipients[0].disposition is RecordType.Delivery
    assert sink.tls_seen == [True]
    await session.quit()


async def test_opportunistic_insecure_untrusted(
    start_sink: StartSink, server_tls: ssl.SSLContext
) -> None:
    sink, port = await start_sink(server_tls)
    session = await connect(port, enable_tls=Tls.OPPORTUNISTIC_INSECURE)
    assert isinstance(session, SmtpClientSession), session
    assert session.tls is not None
    await session.deliver(message("a@example.com"))
    assert sink.tls_seen == [True]
    await session.quit()


async def test_required_insecure_untrusted(
    start_sink: StartSink, server_tls: ssl.SSLContext
) -> None:
    _sink, port = await start_sink(server_tls)
    session = await connect(port, enable_tls=Tls.REQUIRED_INSECURE)
    assert isinstance(session, SmtpClientSession), session
    assert session.tls is not None
    await session.quit()


@pytest.mark.parametrize("mode", [Tls.REQUIRED, Tls.OPPORTUNISTIC])
async def test_untrusted_cert_fails_when_verifying(
    start_sink: StartSink, server_tls: ssl.SSLContext, mode: Tls
) -> None:
    _sink, port = await start_sink(server_tls)
    result = await connect(port, enable_tls=mode)
    assert isinstance(result, ConnectFailure)
    assert result.transient
    assert "TLS handshake" in result.reason


@pytest.mark.parametrize("mode", [Tls.REQUIRED, Tls.REQUIRED_INSECURE])
async def test_required_without_starttls(start_sink: StartSink, mode: Tls) -> None:
    _sink, port = await start_sink()
    result = await connect(port, enable_tls=mode)
    assert isinstance(result, ConnectFailure)
    assert result.transient
    assert "STARTTLS" in result.reason


async def test_opportunistic_without_starttls_is_plain(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.OPPORTUNISTIC)
    assert isinstance(session, SmtpClientSession)
    assert session.tls is None
    await session.deliver(message("a@example.com"))
    assert sink.tls_seen == [False]
    await session.quit()


async def test_disabled_ignores_starttls(
    start_sink: StartSink, server_tls: ssl.SSLContext, trusting: ssl.SSLContext
) -> None:
    sink, port = await start_sink(server_tls)
    session = await connect(port, trusting, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    assert "starttls" in session.extensions
    assert session.tls is None
    await session.deliver(message("a@example.com"))
    assert sink.tls_seen == [False]
    await session.quit()


async def test_stalled_command_is_transient(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    sink.mail_gate = asyncio.Event()
    session = await connect(port, enable_tls=Tls.DISABLED, mail_from_timeout=0.2)
    assert isinstance(session, SmtpClientSession)
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcome = await session.deliver(message("a@example.com", "b@example.com"))
    assert loop.time() - start < 2
    assert [r.disposition for r in outcome.recipients] == [RecordType.TransientFailure] * 2
    assert outcome.recipients[0].response.code == 400
    assert "KumoMTA internal" in outcome.recipients[0].response.content
    assert session.closed
    await session.quit()


async def test_sender_refused_settles_every_recipient(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    refused = await session.deliver(
        message("a@example.com", "b@example.com", sender="badsender@example.com")
    )
    expected = Response(550, (5, 7, 1), "sender refused", "MAIL FROM:<badsender@example.com>\r\n")
    assert [(r.disposition, r.response) for r in refused.recipients] == [
        (RecordType.Bounce, expected)
    ] * 2
    assert not session.closed
    after = await session.deliver(message("c@example.com"))
    assert after.recipients[0].disposition is RecordType.Delivery
    assert [m[2] for m in sink.messages] == [["c@example.com"]]
    await session.quit()


async def test_every_recipient_refused_sends_no_body(start_sink: StartSink) -> None:
    sink, port = await start_sink()
    session = await connect(port, enable_tls=Tls.DISABLED)
    assert isinstance(session, SmtpClientSession)
    refused = await session.deliver(message("tempfail@example.com", "permfail@example.com"))
    assert [r.response.code for r in refused.recipients] == [450, 550]
    assert [r.disposition for r in refused.recipients] == [
        RecordType.TransientFailure,
        RecordType.Bounce,
    ]
    after = await session.deliver(message("c@example.com"))
    assert after.recipients[0].disposition is RecordType.Delivery
    assert [m[2] for m in sink.messages] == [["c@example.com"]]
    await session.quit()
