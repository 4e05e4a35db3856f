"""STARTTLS and SMTP AUTH on kumoq.smtp.server, over real sockets with real TLS clients
(smtplib's ``starttls``, aiosmtplib, and a raw socket wrapped by ``ssl``), with a trustme CA.

- EHLO offers STARTTLS, and AUTH only after it; AUTH before TLS gets ``538 5.7.11``;
- AUTH PLAIN and LOGIN succeed with credentials the handler accepts (``235``) and fail
  otherwise (``535``); an authenticated client may relay where an unauthenticated one gets
  ``550 5.7.1``;
- failed authentications from one IP trip the limit: ``454 4.7.0``, the handler not asked,
  counted in ``smtp_server_auth_failures``;
- a command pipelined behind STARTTLS in the same packet is never run (CVE-2011-0411);
- the connection meta gets the TLS details, a verified client certificate's subject too;
- without keys a self-signed certificate for the host name is made; bad keys fail the start;
  the ``openssl`` fallback; a failed handshake ends the connection and leaves the books.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ConfigError, ListenerError
from kumoq.metrics import REGISTRY
from kumoq.smtp import tls as tls_module
from kumoq.smtp.server import start_esmtp_listener
from kumoq.smtp.tls import server_context
from tests.integration.smtp_server_support import BODY, FakeHandler, RawClient, Start, raw

pytestmark = pytest.mark.integration

PLAIN = base64.b64encode(b"\0daniel\0tiger").decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def keys(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """``tls_certificate`` and ``tls_private_key`` for mx.test and 127.0.0.1."""
    cert = ca.issue_cert("mx.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return {
        "tls_certificate": str(tmp_path / "cert.pem"),
        "tls_private_key": str(tmp_path / "key.pem"),
    }


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def handler() -> FakeHandler:
    handler = FakeHandler()
    handler.passwords = {"daniel": "tiger"}
    return handler


def client_session(
    port: int, context: ssl.SSLContext, script: Callable[[smtplib.SMTP], Any]
) -> Any:
    """Connect, EHLO, STARTTLS, EHLO again, then ``script(client)``; in a thread."""

    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            assert not client.has_extn("auth")
            client.starttls(context=context)
            client.ehlo("secure.test")
            return script(client)

    return asyncio.to_thread(run)


def failures(reason: str) -> float:
    labels = {"listener": "127.0.0.1:0", "reason": reason}
    return REGISTRY.get_sample_value("smtp_server_auth_failures_total", labels) or 0.0


# --- STARTTLS with a configured certificate ------------------------------------------------------
async def test_starttls_and_auth_plain_with_smtplib(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys, meta={"tenant": "t1"})

    def script(client: smtplib.SMTP) -> Any:
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not client.has_extn("starttls")  # not after TLS is up
        assert client.login("daniel", "tiger") == (235, b"2.7.0 Authentication successful")
        return client.sendmail("s@example.com", ["r@example.com"], BODY)

    assert await client_session(listener.address[1], trusting, script) == {}
    (conn,) = handler.conns
    assert conn["tls_protocol_version"] in {"TLSv1.2", "TLSv1.3"}
    assert conn["tls_cipher"]
    assert "tls_peer_subject_name" not in conn  # no client certificate
    assert conn["ehlo_domain"] == "secure.test"  # the EHLO after STARTTLS
    assert (conn["authn_id"], conn["authz_id"]) == ("daniel", "daniel")
    assert conn["tenant"] == "t1"
    assert ("auth_plain", ("daniel", "daniel")) in handler.calls
    assert len(handler.messages) == 1


async def test_auth_login_with_smtplib(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys)

    def script(client: smtplib.SMTP) -> tuple[Any, Any]:
        client.user, client.password = "daniel", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        client.user, client.password = "daniel", "tiger"
        ok = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        return refused.value.smtp_code, ok

    code, ok = await client_session(listener.address[1], trusting, script)
    assert code == 535
    assert ok == (235, b"2.7.0 Authentication successful")
    assert handler.rejections == [
        ("AUTH LOGIN", handler.rejections[0][1])  # the command, never the credentials
    ]
    assert str(handler.rejections[0][1]) == "535 5.7.8 Authentication credentials invalid"


async def test_aiosmtplib_starttls_and_login(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=listener.address[1], timeout=10, tls_context=trusting
    )
    async with client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login("daniel", "nope")
        response = await client.login("daniel", "tiger")
        assert response.code == 235
        await client.sendmail("s@example.com", ["r@example.com"], BODY)
    assert handler.conns[0]["authn_id"] == "daniel"
    assert len(handler.messages) == 1


async def test_auth_is_refused_before_tls(
    start: Start, handler: FakeHandler, keys: dict[str, str]
) -> None:
    listener = await start(**keys)

    def script(c: RawClient) -> list[str]:
        c.reply()
        c.send(b"EHLO client.test\r\n")
        ehlo = c.reply()
        c.send(f"AUTH PLAIN {PLAIN}\r\nAUTH LOGIN\r\nQUIT\r\n".encode())
        return [ehlo, c.reply(), c.reply(), c.reply()]

    ehlo, plain, login, _ = await raw(listener.address[1], script)
    assert "250-STARTTLS" in ehlo or "250 STARTTLS" in ehlo
    assert "AUTH" not in ehlo
    refusal = "538 5.7.11 Encryption required for requested authentication mechanism"
    assert plain == login == refusal
    assert not [call for call in handler.calls if call[0] == "auth_plain"]


# --- relaying ------------------------------------------------------------------------------------
async def test_an_authenticated_client_may_relay(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys, relay_hosts=["192.0.2.0/24"])  # 127.0.0.1 may not relay

    def anonymous(client: smtplib.SMTP) -> int:
        client.mail("s@example.com")
        return client.rcpt("r@example.com")[0]

    def authenticated(client: smtplib.SMTP) -> dict[str, Any]:
        client.login("daniel", "tiger")
        return client.sendmail("s@example.com", ["r@example.com"], BODY)

    assert await client_session(listener.address[1], trusting, anonymous) == 550
    assert str(handler.rejections[-1][1]).startswith("550 5.7.1 relaying not permitted")
    assert await client_session(listener.address[1], trusting, authenticated) == {}
    assert len(handler.messages) == 1


# --- the failure limit ---------------------------------------------------------------------------
async def test_failed_authentications_are_rate_limited_per_ip(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys, max_auth_failures_per_ip=2)
    invalid, limited = failures("invalid_credentials"), failures("rate_limited")

    def attempts(client: smtplib.SMTP) -> list[int]:
        codes = []
        for password in ("a", "b", "tiger"):
            client.user, client.password = "daniel", password
            try:  # AUTH PLAIN only: login() would go on to try LOGIN too
                codes.append(client.auth("PLAIN", client.auth_plain)[0])
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
        return codes

    def again(client: smtplib.SMTP) -> tuple[int, bytes]:
        return client.docmd("AUTH", f"PLAIN {PLAIN}")

    assert await client_session(listener.address[1], trusting, attempts) == [535, 535, 454]
    # Per client IP, not per connection: a new connection is refused too, the policy not asked.
    assert await client_session(listener.address[1], trusting, again) == (
        454,
        b"4.7.0 Temporary authentication failure",
    )
    assert [c for c in handler.calls if c[0] == "auth_plain"] == [
        ("auth_plain", ("daniel", "daniel"))
    ] * 2
    assert failures("invalid_credentials") == invalid + 2
    assert failures("rate_limited") == limited + 2
    assert all("tiger" not in command and PLAIN not in command for command, _ in handler.rejections)


# --- STARTTLS command injection ------------------------------------------------------------------
async def test_a_command_pipelined_behind_starttls_is_not_run(
    start: Start, handler: FakeHandler, keys: dict[str, str], trusting: ssl.SSLContext
) -> None:
    listener = await start(**keys)

    def script(c: RawClient) -> list[str]:
        c.reply()
        # One packet: the MAIL after STARTTLS was sent in the clear, before the handshake.
        c.send(b"EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
        replies = [c.reply(), c.reply()]
        assert c.buf == b""
        c.sock = trusting.wrap_socket(c.sock, server_hostname="mx.test")
        c.send(b"RCPT TO:<victim@example.com>\r\nMAIL FROM:<s@example.com>\r\nQUIT\r\n")
        return [*replies, c.reply(), c.reply(), c.reply()]

    _, ready, rcpt, mail, _ = await raw(listener.address[1], script)
    assert ready == "220 2.0.0 Ready to start TLS"
    assert rcpt == "503 5.5.1 MAIL FROM must be issued first"
    assert mail == "250 2.1.0 OK <s@example.com>"
    assert [c[0] for c in handler.calls] == ["ehlo", "mail_from"]  # the evil MAIL never ran
    assert str(handler.calls[1][1]) == "s@example.com"
    # RFC 3207: the EHLO from before STARTTLS is forgotten, and the TLS details are recorded.
    assert "ehlo_domain" not in handler.conns[0]
    assert handler.conns[0]["tls_protocol_version"] in {"TLSv1.2", "TLSv1.3"}


@pytest.mark.parametrize("client_sends", [b"this is not a TLS ClientHello\r\n" * 10, b"", None])
async def test_a_failed_handshake_closes_the_connection(
    start: Start, keys: dict[str, str], client_sends: bytes | None
) -> None:
    """Garbage instead of a ClientHello, the client gone, or silent until the handshake times
    out (``client_timeout``; asyncio then never tells the protocol that its connection is
    lost): the connection closes and leaves the listener's books."""
    listener = await start(**keys, client_timeout="1s")

    def script(c: RawClient) -> tuple[str, bool]:
        c.reply()
        c.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        c.reply()
        ready = c.reply()
        if client_sends == b"":
            return ready, True  # raw() closes the socket
        if client_sends is not None:
            c.send(client_sends)
        try:
            return ready, c.at_eof()
        except ConnectionResetError:
            return ready, True

    assert await raw(listener.address[1], script) == ("220 2.0.0 Ready to start TLS", True)
    for _ in range(200):
        if listener.connection_count == 0:
            break
        await asyncio.sleep(0.01)
    assert listener.connection_count == 0
    assert listener.admission.connections_from("127.0.0.1") == 0


# --- client certificates -------------------------------------------------------------------------
async def test_a_verified_client_certificate_subject_goes_into_the_meta(
    start: Start,
    handler: FakeHandler,
    ca: trustme.CA,
    keys: dict[str, str],
    trusting: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    listener = await start(**keys, tls_required_client_ca=str(tmp_path / "ca.pem"))
    ca.issue_cert("client.test", common_name="client.test").configure_cert(trusting)

    def script(client: smtplib.SMTP) -> dict[str, Any]:
        return client.sendmail("s@example.com", ["r@example.com"], BODY)

    assert await client_session(listener.address[1], trusting, script) == {}
    subject = handler.conns[0]["tls_peer_subject_name"]
    assert "CN=client.test" in subject
    assert all("=" in part for part in subject)


# --- the self-signed certificate, and the keys ---------------------------------------------------
async def test_a_self_signed_certificate_is_made_without_keys(
    start: Start, handler: FakeHandler
) -> None:
    listener = await start()  # no tls_certificate, no tls_private_key
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def script(client: smtplib.SMTP) -> bytes | None:
        client.login("daniel", "tiger")
        client.sendmail("s@example.com", ["r@example.com"], BODY)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        return sock.getpeercert(binary_form=True)

    der = await client_session(listener.address[1], insecure, script)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject == cert.issuer  # self-signed
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mx.test"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mx.test"]
    assert handler.conns[0]["authn_id"] == "daniel"
    assert len(handler.messages) == 1


def test_inline_key_data_is_accepted(ca: trustme.CA) -> None:
    cert = ca.issue_cert("mx.test")
    config = EsmtpListenerConfig.from_mapping(
        {
            "hostname": "mx.test",
            "tls_certificate": {"key_data": cert.cert_chain_pems[0].bytes().decode()},
            "tls_private_key": {"key_data": cert.private_key_pem.bytes().decode()},
        }
    )
    assert isinstance(server_context(config), ssl.SSLContext)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"tls_certificate": "/nonexistent/cert.pem", "tls_private_key": "/nonexistent/key.pem"},
         "cannot use tls_certificate '/nonexistent/cert.pem'"),
        ({"tls_certificate": {"vault_path": "x"}, "tls_private_key": {"vault_path": "y"}},
         "tls_certificate: only a PEM file path or {key_data='<PEM>'} is supported"),
        ({"tls_required_client_ca": "/nonexistent/ca.pem"}, "cannot use tls_required_client_ca"),
    ],
)  # fmt: skip
async def test_bad_keys_fail_the_start(
    handler: FakeHandler, keys: dict[str, Any], message: str
) -> None:
    config = EsmtpListenerConfig.from_mapping({"listen": "127.0.0.1:0", **keys})
    with pytest.raises(ListenerError, match=r"esmtp listener 127\.0\.0\.1:0") as info:
        await start_esmtp_listener(config, handler)
    assert message in str(info.value)


def test_mismatched_key_fails_without_showing_inline_key_data(ca: trustme.CA) -> None:
    one, other = ca.issue_cert("mx.test"), ca.issue_cert("other.test")
    config = EsmtpListenerConfig.from_mapping(
        {
            "tls_certificate": {"key_data": one.cert_chain_pems[0].bytes().decode()},
            "tls_private_key": {"key_data": other.private_key_pem.bytes().decode()},
        }
    )
    with pytest.raises(ListenerError) as info:
        server_context(config)
    assert "PRIVATE KEY" not in str(info.value)
    assert "{key_data=...}" in str(info.value)


def test_openssl_makes_the_certificate_without_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_cryptography(hostname: str) -> tuple[bytes, bytes]:
        raise ImportError("no module named 'cryptography'")

    monkeypatch.setattr(tls_module, "_with_cryptography", no_cryptography)
    tls_module.self_signed.cache_clear()
    try:
        cert, key = tls_module.self_signed("openssl.test")
        assert b"BEGIN CERTIFICATE" in cert
        assert b"PRIVATE KEY" in key
        names = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert names.value.get_values_for_type(x509.DNSName) == ["openssl.test"]
        config = EsmtpListenerConfig.from_mapping({"hostname": "openssl.test"})
        assert isinstance(server_context(config), ssl.SSLContext)

        monkeypatch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(ListenerError, match="install the 'cryptography' package or the"):
            tls_module.self_signed("nothing.test")
    finally:
        tls_module.self_signed.cache_clear()


def test_tls_keys_must_come_together() -> None:
    with pytest.raises(ConfigError, match="tls_certificate and tls_private_key must be set"):
        EsmtpListenerConfig.from_mapping({"tls_certificate": "/etc/cert.pem"})
