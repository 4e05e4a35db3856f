"""End to end: STARTTLS from ``kumoq serve`` to a real aiosmtpd sink, in every ``enable_tls`` mode.

The sink speaks SMTP on 127.0.0.1 with a trustme certificate issued for ``localhost`` (the MX name
the daemon verifies: ``mx_list = { {name='localhost', addr='127.0.0.1:PORT'} }``). The daemon is a
subprocess, so it is told which CA to trust with ``SSL_CERT_FILE``: the sink's CA ("trusted") or an
unrelated CA ("untrusted"); ``ssl.create_default_context()`` in the daemon reads that variable.

The sink runs aiosmtpd's ``SMTP`` protocol on its own event loop in its own thread rather than in
aiosmtpd's ``Controller``, so that teardown owns every accepted transport, including one whose TLS
handshake the daemon aborted: it closes the server and those transports, cancels the leftover
tasks and closes the loop, leaving nothing for the garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.policies import policy

pytestmark = pytest.mark.integration

MX_NAME = "localhost"


@dataclass(frozen=True)
class Seen:
    """One message as the sink received it, with the TLS state of its session."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls_version: str | None
    tls_cipher: str | None


class Sink:
    """aiosmtpd handler: accepts everything and notes whether each message came over TLS."""

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[Seen] = []
        self.connections = 0
        self.starttls_commands = 0
        self.handshakes = 0
        self._lock = threading.Lock()

    def count(self, attr: str) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + 1)

    def handle_STARTTLS(self, server, session, envelope):
        """aiosmtpd calls this (synchronously) once the server side of the handshake is done."""
        self.count("handshakes")
        return True

    async def handle_DATA(self, server, session, envelope):
        version = cipher = None
        if session.ssl is not None:
            sslobj = session.ssl["ssl_object"]
            version, cipher = sslobj.version(), sslobj.cipher()[0]
        with self._lock:
            self.messages.append(
                Seen(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, version, cipher)
            )
        return "250 2.0.0 queued"


class SinkServer:
    """aiosmtpd's ``SMTP`` served by ``loop.create_server`` on a loop running in a thread."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.handler = Sink()
        self.tls = tls
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    def start(self) -> SinkServer:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> int:
        self._server = await self._loop.create_server(self._protocol, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def _protocol(self) -> SMTP:
        smtp = SMTP(
            self.handler,
            hostname="sink.test",
            tls_context=self.tls,
            require_starttls=False,
            loop=self._loop,
        )
        made = smtp.connection_made
        starttls = smtp._smtp_methods["STARTTLS"]

        def connection_made(transport: asyncio.BaseTransport) -> None:
            if smtp.transport is None:  # the TCP connection (not the TLS layer after STARTTLS)
                self._transports.add(transport)
                self.handler.count("connections")
            made(transport)

        async def smtp_starttls(arg: str) -> None:
            self.handler.count("starttls_commands")
            await starttls(arg)

        smtp.connection_made = connection_made  # type: ignore[method-assign]
        smtp._smtp_methods["STARTTLS"] = smtp_starttls
        return smtp

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()  # type: ignore[attr-defined]
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_asyncgens()

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._transports.clear()
            gc.collect()  # surface any unclosed-socket warning in this test, not a later one


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``trusted``: the sink's CA; ``untrusted``: a CA that signed nothing the sink uses."""
    folder = tmp_path_factory.mktemp("ca")
    files = {"trusted": folder / "sink-ca.pem", "untrusted": folder / "other-ca.pem"}
    ca.cert_pem.write_to_path(str(files["trusted"]))
    trustme.CA().cert_pem.write_to_path(str(files["untrusted"]))
    return files


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(MX_NAME, "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def start_sink() -> Iterator[Callable[..., Sink]]:
    """``start_sink(tls=ctx)``: a running sink on ``.port``, offering STARTTLS when ``tls``."""
    servers: list[SinkServer] = []

    def start(*, tls: ssl.SSLContext | None) -> Sink:
        server = SinkServer(tls)
        servers.append(server)
        server.start()
        server.handler.port = server.port
        return server.handler

    yield start
    for server in servers:
        server.stop()


def tls_policy(port: int, mode: str) -> str:
    return policy(
        f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1s',
    protocol = {{
      smtp = {{ mx_list = {{ {{ name = '{MX_NAME}', addr = '127.0.0.1:{port}' }} }} }},
    }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = '{mode}' }}
end)
"""
    )


def run(kumoq: Callable[..., KumoqDaemon], sink: Sink, mode: str, ca_file: Path) -> KumoqDaemon:
    daemon = kumoq(tls_policy(sink.port, mode), env={"SSL_CERT_FILE": str(ca_file)})
    daemon.send("s@example.com", ["r@example.com"])
    return daemon


def tls_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k.startswith("tls_")}


def assert_delivered_over_tls(daemon: KumoqDaemon, sink: Sink) -> dict[str, Any]:
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    assert delivery["recipient"] == "r@example.com"
    assert delivery["response"]["code"] == 250
    assert delivery["peer_address"] == {"name": MX_NAME, "addr": "127.0.0.1"}
    (seen,) = sink.messages
    assert (seen.mail_from, seen.rcpt_tos) == ("s@example.com", ["r@example.com"])
    assert b"This is the body." in seen.content
    assert (sink.starttls_commands, sink.handshakes) == (1, 1)
    assert seen.tls_version is not None, "the sink received the message in plain text"
    assert seen.tls_version.startswith("TLS")
    # The record describes the session the sink saw.
    assert delivery["tls_protocol_version"] == seen.tls_version
    assert delivery["tls_cipher"] == seen.tls_cipher
    return delivery


def assert_delivered_in_plain_text(daemon: KumoqDaemon, sink: Sink) -> None:
    (delivery,) = daemon.wait_for_records("Delivery", 1)
    assert delivery["response"]["code"] == 250
    (seen,) = sink.messages
    assert seen.rcpt_tos == ["r@example.com"]
    assert seen.tls_version is None, f"the sink received the message over {seen.tls_version}"
    assert sink.starttls_commands == 0
    assert tls_fields(delivery) == {}


def assert_kept_queued(daemon: KumoqDaemon, sink: Sink) -> list[dict[str, Any]]:
    """Two TransientFailure records (the first attempt and the 1 s retry), nothing delivered,
    and the message still in the spool once the daemon has stopped."""
    try:
        failures = daemon.wait_for_records("TransientFailure", 2, timeout=30)
    except TimeoutError as exc:
        detail = (
            "\n".join(str(r) for r in daemon.records())
            + "\n"
            + "\n".join(daemon.stderr_lines[-20:])
        )
        raise AssertionError(f"{exc}\n{detail}") from None
    assert [f["num_attempts"] for f in failures[:2]] == [0, 1]
    for failure in failures:
        assert failure["recipient"] == "r@example.com"
        assert 400 <= failure["response"]["code"] < 500
        assert tls_fields(failure) == {}
    assert daemon.records("Delivery") == []
    assert daemon.records("Bounce") == []
    assert sink.messages == []
    assert sink.connections >= 2  # the retry really connected again
    daemon.stop()
    assert [p for p in (daemon.workdir / "var/spool/data").rglob("*") if p.is_file()], "unspooled"
    return failures


# -- The verifying modes with a trusted certificate ------------------------------------------


@pytest.mark.parametrize("mode", ["Opportunistic", "Required"])
def test_verifying_modes_use_starttls_and_verify_the_mx_name(
    kumoq, start_sink, server_tls, ca_files, mode
):
    sink = start_sink(tls=server_tls)
    daemon = run(kumoq, sink, mode, ca_files["trusted"])
    delivery = assert_delivered_over_tls(daemon, sink)
    assert delivery["tls_peer_subject_name"] == [MX_NAME]


# -- The insecure modes accept a certificate nobody trusts -----------------------------------


@pytest.mark.parametrize("mode", ["OpportunisticInsecure", "RequiredInsecure"])
def test_insecure_modes_deliver_over_tls_to_an_untrusted_certificate(
    kumoq, start_sink, server_tls, ca_files, mode
):
    sink = start_sink(tls=server_tls)
    daemon = run(kumoq, sink, mode, ca_files["untrusted"])
    assert_delivered_over_tls(daemon, sink)


# -- The verifying modes with an untrusted certificate: nothing is sent ----------------------


@pytest.mark.parametrize("mode", ["Required", "Opportunistic"])
def test_verifying_modes_keep_the_message_when_the_certificate_is_untrusted(
    kumoq, start_sink, server_tls, ca_files, mode
):
    """The handshake fails on verification: a transient failure, never a plain-text fallback."""
    sink = start_sink(tls=server_tls)
    daemon = run(kumoq, sink, mode, ca_files["untrusted"])
    failures = assert_kept_queued(daemon, sink)
    content = failures[0]["response"]["content"]
    assert f"TLS handshake with {MX_NAME} failed" in content, content
    assert "CERTIFICATE_VERIFY_FAILED" in content, content
    assert f"127.0.0.1:{sink.port}" in content, content
    assert sink.starttls_commands >= 2  # each attempt got as far as the handshake ...
    assert sink.handshakes == 0  # ... which the daemon aborted


# -- The Required modes against a sink without STARTTLS -------------------------------------


@pytest.mark.parametrize("mode", ["Required", "RequiredInsecure"])
def test_required_modes_do_not_send_in_plain_text(kumoq, start_sink, ca_files, mode):
    sink = start_sink(tls=None)
    daemon = run(kumoq, sink, mode, ca_files["trusted"])
    failures = assert_kept_queued(daemon, sink)
    content = failures[0]["response"]["content"]
    assert f"{MX_NAME} does not offer STARTTLS and enable_tls={mode}" in content, content
    assert sink.starttls_commands == 0


# -- Plain text -----------------------------------------------------------------------------


def test_disabled_ignores_offered_starttls(kumoq, start_sink, server_tls, ca_files):
    sink = start_sink(tls=server_tls)
    daemon = run(kumoq, sink, "Disabled", ca_files["trusted"])
    assert_delivered_in_plain_text(daemon, sink)


@pytest.mark.parametrize("mode", ["Opportunistic", "OpportunisticInsecure"])
def test_opportunistic_modes_fall_back_to_plain_text_without_starttls(
    kumoq, start_sink, ca_files, mode
):
    sink = start_sink(tls=None)
    daemon = run(kumoq, sink, mode, ca_files["trusted"])
    assert_delivered_in_plain_text(daemon, sink)
