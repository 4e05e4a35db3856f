"""STARTTLS and SMTP AUTH in the sans-IO session (kumoq.smtp.auth, kumoq.smtp.session).

- EHLO offers STARTTLS when the caller can do TLS, and AUTH PLAIN LOGIN only once TLS is up;
- accepting STARTTLS drops what was pipelined behind it (STARTTLS command injection,
  CVE-2011-0411) and forgets EHLO and the transaction (RFC 3207);
- AUTH before TLS gets ``538 5.7.11``; PLAIN (RFC 4616) and LOGIN exchanges give the
  credentials as an ``Auth`` event; malformed responses get ``501 5.5.2``; the sequence rules;
- a credential never appears in ``command`` (what Rejection records log) or in a repr;
- ``AuthFailures``: the per-IP sliding window, its bound on memory;
- the ``Received:`` header reception writes: ESMTP, ESMTPS, ESMTPSA (RFC 3848).
"""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest

from kumoq.clock import FakeClock
from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ConfigError, LocalProtocolError
from kumoq.message import EnvelopeAddress
from kumoq.reception import Reception
from kumoq.smtp import replies as R
from kumoq.smtp.auth import AuthFailures, Credentials, SaslExchange, redact
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    NEED_DATA,
    Auth,
    CommandAnswered,
    Ehlo,
    Event,
    MailFrom,
    ProtocolError,
    RcptTo,
    ServerSession,
    StartTls,
    State,
)

CONFIG = EsmtpListenerConfig.from_mapping({"hostname": "mx.test"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PLAIN = b64(b"\0daniel\0tiger")


class Client:
    """Feeds a session and answers every pending event: ``Auth`` by ``passwords``."""

    def __init__(self, tls: bool = True, passwords: dict[str, str] | None = None) -> None:
        self.session = ServerSession(CONFIG, tls=tls)
        self.passwords = {"daniel": "tiger"} if passwords is None else passwords
        self.events: list[Event] = []
        self.session.greeting()

    def send(self, data: bytes) -> list[str]:
        session = self.session
        session.receive_data(data)
        out = bytearray()
        while (event := session.next_event()) is not NEED_DATA:
            self.events.append(event)
            if isinstance(event, CommandAnswered | ProtocolError):
                out += event.reply.to_bytes()
            elif isinstance(event, Auth):
                ok = self.passwords.get(event.authc) == event.password
                out += session.accept() if ok else session.send(R.AUTH_INVALID)
            else:
                out += session.accept()
            if isinstance(event, StartTls):
                break  # the caller does the handshake now
        return out.decode().splitlines()

    def handshake(self) -> None:
        self.session.tls_established()

    def secure(self) -> None:
        """EHLO, STARTTLS, handshake, EHLO again."""
        self.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.handshake()
        self.send(b"EHLO client.test\r\n")


# --- EHLO ----------------------------------------------------------------------------------------
def test_ehlo_offers_starttls_then_auth() -> None:
    client = Client()
    lines = client.send(b"EHLO client.test\r\n")
    assert lines[-1] == "250 STARTTLS"
    assert not any("AUTH" in line for line in lines)
    assert client.send(b"STARTTLS\r\n") == ["220 2.0.0 Ready to start TLS"]
    client.handshake()
    lines = client.send(b"EHLO client.test\r\n")
    assert lines[-1] == "250 AUTH PLAIN LOGIN"
    assert not any("STARTTLS" in line for line in lines)
    assert client.session.tls_active


def test_without_tls_nothing_is_offered() -> None:
    client = Client(tls=False)
    lines = client.send(b"EHLO client.test\r\n")
    assert lines[-1] == "250 SMTPUTF8"
    assert client.send(b"STARTTLS\r\n") == ["502 5.5.1 Command unimplemented"]


# --- STARTTLS ------------------------------------------------------------------------------------
def test_a_command_pipelined_behind_starttls_is_dropped() -> None:
    """CVE-2011-0411: what came in the clear after STARTTLS must not run after the handshake."""
    client = Client()
    client.send(b"EHLO client.test\r\n")
    lines = client.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<a@example.com>\r\n")
    assert lines == ["220 2.0.0 Ready to start TLS"]
    assert client.session.buffered == 0
    client.handshake()
    assert client.send(b"RCPT TO:<b@example.com>\r\n") == [
        "503 5.5.1 MAIL FROM must be issued first"
    ]
    assert not any(isinstance(e, MailFrom | RcptTo) for e in client.events)


def test_nothing_is_read_until_the_handshake_is_done() -> None:
    client = Client()
    client.send(b"EHLO client.test\r\nSTARTTLS\r\n")
    client.session.receive_data(b"EHLO again.test\r\n")  # decrypted by the caller's TLS layer
    assert client.session.next_event() is NEED_DATA
    client.handshake()
    assert client.session.next_event() == Ehlo("again.test", extended=True)


def test_starttls_forgets_ehlo_and_the_transaction() -> None:
    client = Client()
    client.send(b"EHLO client.test\r\nMAIL FROM:<s@example.com>\r\nRSET\r\n")
    client.send(b"STARTTLS\r\n")
    client.handshake()
    assert client.session.helo_domain is None
    assert client.session.sender is None
    assert client.session.state is State.READY
    # RFC 3207: the client must start over with EHLO; AUTH before it is refused.
    assert client.send(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n") == ["503 5.5.1 Send EHLO first"]


def test_starttls_sequence_rules() -> None:
    client = Client()
    client.send(b"EHLO client.test\r\n")
    assert client.send(b"MAIL FROM:<s@example.com>\r\nSTARTTLS\r\n")[-1] == (
        "503 5.5.1 STARTTLS not permitted during a mail transaction"
    )
    client.send(b"RSET\r\nSTARTTLS\r\n")
    client.handshake()
    assert client.send(b"STARTTLS\r\n") == ["503 5.5.1 TLS already active"]
    assert client.send(b"STARTTLS now\r\n")[0].startswith("501 5.5.4")


def test_tls_established_needs_an_accepted_starttls() -> None:
    with pytest.raises(LocalProtocolError):
        Client().session.tls_established()


# --- AUTH ----------------------------------------------------------------------------------------
def test_auth_before_tls_is_refused_with_538() -> None:
    client = Client()
    client.send(b"EHLO client.test\r\n")
    for line in (b"AUTH PLAIN " + PLAIN.encode(), b"AUTH LOGIN", b"AUTH PLAIN"):
        assert client.send(line + b"\r\n") == [
            "538 5.7.11 Encryption required for requested authentication mechanism"
        ]
    assert not client.session.authenticated
    assert Client(tls=False).send(b"EHLO c\r\nAUTH PLAIN\r\n")[-1].startswith("538 5.7.11")


def test_auth_plain_with_an_initial_response() -> None:
    client = Client()
    client.secure()
    assert client.send(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n") == [
        "235 2.7.0 Authentication successful"
    ]
    assert client.events[-1] == Auth("PLAIN", "daniel", "daniel", "tiger")
    assert client.session.authenticated
    assert client.send(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n") == [
        "503 5.5.1 Already authenticated"
    ]


def test_auth_plain_after_an_empty_challenge_with_an_authorization_identity() -> None:
    client = Client()
    client.secure()
    assert client.send(b"auth plain\r\n") == ["334 "]
    assert client.send(b64(b"boss\0daniel\0tiger").encode() + b"\r\n") == [
        "235 2.7.0 Authentication successful"
    ]
    assert client.events[-1] == Auth("PLAIN", "boss", "daniel", "tiger")


def test_auth_login() -> None:
    client = Client()
    client.secure()
    assert client.send(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert client.send(b64(b"daniel").encode() + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert client.send(b64(b"tiger").encode() + b"\r\n") == ["235 2.7.0 Authentication successful"]
    assert client.events[-1] == Auth("LOGIN", "daniel", "daniel", "tiger")


def test_auth_login_with_the_user_name_as_initial_response() -> None:
    client = Client()
    client.secure()
    assert client.send(b"AUTH LOGIN " + b64(b"daniel").encode() + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert client.send(b64(b"wrong").encode() + b"\r\n") == [
        "535 5.7.8 Authentication credentials invalid"
    ]
    assert not client.session.authenticated
    assert client.session.errors == 1


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH PLAIN !!!"], "501 5.5.2 Cannot Base64-decode client response"),
        ([b"AUTH PLAIN " + b64(b"daniel:tiger").encode()], "501 5.5.2 Malformed"),
        ([b"AUTH PLAIN " + b64(b"\0\0tiger").encode()], "501 5.5.2 Malformed"),
        ([b"AUTH PLAIN " + b64(b"a\0b\0c\0d").encode()], "501 5.5.2 Malformed"),
        ([b"AUTH PLAIN " + b64(b"\0\xff\0tiger").encode()], "501 5.5.2 Malformed"),
        ([b"AUTH PLAIN " + b64(b"\0" + b"u" * 256 + b"\0p").encode()], "501 5.5.2 Malformed"),
        ([b"AUTH PLAIN", b"AAA"], "501 5.5.2 Cannot Base64-decode client response"),
        ([b"AUTH PLAIN", b"*"], "501 5.7.0 Authentication cancelled"),
        ([b"AUTH LOGIN", b"="], "501 5.5.2 Cannot Base64-decode"),
        ([b"AUTH LOGIN", b""], "501 5.5.2 Malformed"),
        ([b"AUTH LOGIN", b64(b"daniel").encode(), b"*"], "501 5.7.0 Authentication cancelled"),
        ([b"AUTH CRAM-MD5"], "504 5.5.4 Unrecognized authentication type"),
        ([b"AUTH"], "501 5.5.2 Syntax: AUTH mechanism [initial-response]"),
        ([b"AUTH PLAIN a b"], "501 5.5.2 Syntax"),
        ([b"AUTH PLAIN", b"x" * 600], "500 5.5.6 Authentication Exchange line is too long"),
    ],
)
def test_malformed_exchanges(lines: list[bytes], reply: str) -> None:
    client = Client()
    client.secure()
    answers = [client.send(line + b"\r\n") for line in lines]
    assert answers[-1][0].startswith(reply)
    assert not client.session.authenticated
    # The exchange is over: the next line is a command again.
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 the goggles do nothing"]


def test_auth_is_refused_in_a_transaction() -> None:
    client = Client()
    client.secure()
    assert client.send(b"MAIL FROM:<s@example.com>\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n")[
        -1
    ] == ("503 5.5.1 AUTH not permitted during a mail transaction")


def test_no_credential_reaches_command_or_repr() -> None:
    client = Client(passwords={})
    client.secure()
    client.send(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert client.session.command == "AUTH PLAIN"
    client.send(b"AUTH LOGIN\r\n" + b64(b"daniel").encode() + b"\r\n")
    client.send(b"not base64!\r\n")  # refused, naming only the command
    refusal = client.events[-1]
    assert isinstance(refusal, ProtocolError)
    assert refusal.command == "AUTH LOGIN"
    auth = Auth("PLAIN", "daniel", "daniel", "tiger")
    assert "tiger" not in repr(auth)
    assert "tiger" not in repr(Credentials("daniel", "daniel", "tiger"))
    assert "tiger" not in repr(client.events)
    assert redact(b"AUTH PLAIN AGRhbmllbAB0aWdlcg==") == b"AUTH PLAIN"
    assert redact(b"auth") == b"auth"


def test_a_bare_lf_ends_the_exchange() -> None:
    client = Client()
    client.secure()
    client.send(b"AUTH PLAIN\r\n")
    assert client.send(PLAIN.encode() + b"\n") == ["500 5.5.2 bare LF not allowed"]
    assert client.session.command == "AUTH PLAIN"
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 the goggles do nothing"]


def test_sasl_exchange_directly() -> None:
    exchange, step = SaslExchange.begin("PLAIN =")
    assert step == R.AUTH_MALFORMED  # "=" is an empty response: no NULs
    exchange, step = SaslExchange.begin("login")
    assert exchange.mechanism == "LOGIN"
    assert step == Reply(334, None, "VXNlcm5hbWU6")
    assert Reply(334, None, "").to_bytes() == b"334 \r\n"  # RFC 4954: "334" SP


# --- AuthFailures --------------------------------------------------------------------------------
def test_auth_failures_block_after_the_limit_within_the_window() -> None:
    book = AuthFailures(limit=3, window=60.0)
    assert not book.failed("192.0.2.1", 0.0)
    assert not book.failed("192.0.2.1", 10.0)
    assert not book.blocked("192.0.2.1", 10.0)
    assert book.failed("192.0.2.1", 20.0)  # the third: blocked from now on
    assert book.blocked("192.0.2.1", 59.0)
    assert book.retry_after("192.0.2.1", 59.0) == pytest.approx(1.0)
    assert not book.blocked("192.0.2.2", 59.0)  # per IP
    assert not book.blocked("192.0.2.1", 60.0)  # the first failure is a window old
    assert book.retry_after("192.0.2.1", 60.0) == 0.0
    assert book.failed("192.0.2.1", 61.0)  # 10, 20 and 61 are within 60 s
    assert not book.blocked("192.0.2.1", 200.0)
    assert len(book) == 0  # an IP with nothing left in the window is forgotten


def test_auth_failures_keep_at_most_max_clients() -> None:
    book = AuthFailures(limit=2, window=60.0, max_clients=3)
    for i in range(10):
        book.failed(f"198.51.100.{i}", float(i))
    assert len(book) == 3
    book.failed("198.51.100.9", 10.0)
    assert book.blocked("198.51.100.9", 10.0)
    assert not book.blocked("198.51.100.0", 10.0)  # the least recent was forgotten


# --- what reception makes of it ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tls", "auth", "protocol"),
    [
        (False, False, "ESMTP"),
        (True, False, "ESMTPS (TLSv1.3:TLS_AES_256_GCM_SHA384)"),
        (True, True, "ESMTPSA (TLSv1.3:TLS_AES_256_GCM_SHA384)"),
    ],
)
def test_the_received_header_names_tls_and_auth(tls: bool, auth: bool, protocol: str) -> None:
    """RFC 3848's ESMTPS and ESMTPSA, with KumoMTA's ``(version:cipher)``."""
    unused = cast(Any, None)
    reception = Reception(
        events=unused, spool=unused, queues=unused, records=unused, clock=FakeClock(),
        hostname="mx.test",
    )  # fmt: skip
    conn: dict[str, Any] = {"received_from": "192.0.2.1", "received_via": "192.0.2.2:25"}
    if tls:
        conn |= {"tls_protocol_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384"}
    if auth:
        conn |= {"authn_id": "daniel", "authz_id": "daniel"}
    header = reception._received_header(conn, "ID1", EnvelopeAddress("r", "example.com"), 0.0)
    assert f"\r\n  with {protocol} id ID1 for <r@example.com>;\r\n".encode() in header


def test_the_listener_keys_of_the_auth_limit() -> None:
    assert (CONFIG.max_auth_failures_per_ip, CONFIG.auth_failure_window) == (5, 300.0)
    config = EsmtpListenerConfig.from_mapping(
        {"max_auth_failures_per_ip": 3, "auth_failure_window": "1 minute"}
    )
    assert (config.max_auth_failures_per_ip, config.auth_failure_window) == (3, 60.0)
    with pytest.raises(ConfigError, match="max_auth_failures_per_ip"):
        EsmtpListenerConfig.from_mapping({"max_auth_failures_per_ip": 0})
    with pytest.raises(ConfigError, match="auth_failure_window"):
        EsmtpListenerConfig.from_mapping({"auth_failure_window": "0s"})
