"""The HTTP listener in this process, over real sockets, with reception and the policy behind
their seams: auth, liveness, bodies, and every error as a JSON answer.

The e2e tests (tests/e2e/test_http_*.py) run the same endpoints through ``kumoq serve``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import ssl
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from kumoq.clock import FakeClock
from kumoq.config.http import HttpListenerConfig
from kumoq.errors import PolicyError, RejectError
from kumoq.http import HttpListener, HttpServices, start_http_listener
from kumoq.message import Message

pytestmark = pytest.mark.integration

RAW = {
    "envelope_sender": "sender@example.com",
    "content": "Subject: hi {{ name }}\n\nHello {{ name }}",
    "recipients": [{"email": "a@example.com", "name": "A", "metadata": {"k": "v"}}],
}


@dataclass
class FakeReception:
    is_ready: bool = True
    problem: str | None = None
    admitted: list[Message] = field(default_factory=list)
    fail_with: BaseException | None = None
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self) -> bool:
        return self.is_ready

    @property
    def storage_problem(self) -> str | None:
        return self.problem

    async def admit(
        self, messages: list[Message], *, peer: dict[str, str], reception_protocol: str
    ) -> list[str | None]:
        assert reception_protocol == "HTTP"
        if self.fail_with is not None:
            raise self.fail_with
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.admitted.extend(messages)
        return [None] * len(messages)


@dataclass
class FakePolicy:
    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def has_handler(self, name: str) -> bool:
        return name in self.handlers

    def call(self, name: str, *args: object) -> Any:
        self.calls.append((name, args))
        return self.handlers[name](*args)


@dataclass
class Rig:
    reception: FakeReception
    policy: FakePolicy
    listener: HttpListener

    @property
    def url(self) -> str:
        assert self.listener.address is not None
        host, port = self.listener.address
        return f"http://{host}:{port}"


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Any]]:
    listeners: list[HttpListener] = []

    async def start(**config: Any) -> Rig:
        reception, policy = FakeReception(), FakePolicy()
        policy.handlers["http_server_validate_auth_basic"] = lambda u, p: (
            (u, p)
            == (
                "daniel",
                "tiger",
            )
        )
        cfg = HttpListenerConfig.from_mapping(
            {"listen": "127.0.0.1:0", "hostname": "h.test", **config}
        )
        listener = await start_http_listener(cfg, HttpServices(reception, policy, FakeClock()))
        listeners.append(listener)
        return Rig(reception, policy, listener)

    yield start
    for listener in listeners:
        await listener.close()


def outside() -> aiohttp.ClientSession:
    """A client whose connections come from 127.0.0.2, outside the default trusted_hosts."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def answer(response: aiohttp.ClientResponse) -> tuple[int, Any]:
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


# -- liveness -------------------------------------------------------------------------------


async def test_liveness_says_ok_then_why_not(rig):
    r = await rig()
    async with aiohttp.ClientSession() as client:
        url = f"{r.url}/api/check-liveness/v1"
        assert await answer(await client.get(url)) == (200, {"status": "OK"})
        r.reception.is_ready = False
        assert await answer(await client.get(url)) == (503, {"error": "waiting for spool startup"})
        r.reception.is_ready = True
        r.reception.problem = "spool 'data': 1.0% free, below min_free_space 10%"
        assert await answer(await client.get(url)) == (
            503,
            {"error": "spool 'data': 1.0% free, below min_free_space 10%"},
        )
        r.listener.begin_shutdown()
        assert await answer(await client.get(url)) == (503, {"error": "shutting down"})


async def test_drain_answers_503_while_a_request_in_flight_finishes(rig):
    r = await rig()
    r.reception.gate = asyncio.Event()
    async with aiohttp.ClientSession() as client:
        injecting = asyncio.ensure_future(client.post(f"{r.url}/api/inject/v1", json=RAW))
        await asyncio.wait_for(r.reception.entered.wait(), 5)
        assert r.listener.in_flight == 1
        draining = asyncio.ensure_future(r.listener.drain(5))
        status, body = await answer(await client.get(f"{r.url}/api/check-liveness/v1"))
        assert (status, body) == (503, {"error": "shutting down"})
        status, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=RAW))
        assert (status, body) == (503, {"error": "shutting down"})
        assert not draining.done()
        r.reception.gate.set()
        status, body = await answer(await injecting)
        assert (status, body["success_count"]) == (200, 1)
        await asyncio.wait_for(draining, 5)
    await r.listener.close()
    assert len(r.reception.admitted) == 1


async def test_liveness_is_public_and_everything_else_needs_credentials_from_outside(rig):
    r = await rig()
    async with outside() as client:
        status, _ = await answer(await client.get(f"{r.url}/api/check-liveness/v1"))
        assert status == 200
        for method, path in (("GET", "/metrics"), ("POST", "/api/inject/v1")):
            response = await client.request(method, f"{r.url}{path}", json=RAW)
            status, body = await answer(response)
            assert status == 401
            assert "not in trusted_hosts" in body["error"]
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert r.reception.admitted == []


async def test_basic_auth_through_the_policy_is_cached(rig):
    r = await rig()
    async with outside() as client:
        for _ in range(3):
            response = await client.get(f"{r.url}/metrics", headers=basic("daniel", "tiger"))
            assert response.status == 200
        assert len(r.policy.calls) == 1
        assert r.policy.calls[0] == ("http_server_validate_auth_basic", ("daniel", "tiger"))
        status, body = await answer(
            await client.get(f"{r.url}/metrics", headers=basic("daniel", "lion"))
        )
        assert (status, body) == (401, {"error": "HttpBasicAuth Authentication Failed for daniel"})


async def test_a_trusted_peer_with_bad_credentials_is_refused_too(rig):
    r = await rig()
    async with aiohttp.ClientSession() as client:
        response = await client.get(f"{r.url}/metrics", headers=basic("daniel", "x"))
        assert response.status == 401


@pytest.mark.parametrize(
    ("header", "text"),
    [
        ("Bearer abc", "only Basic is supported"),
        ("Basic !!!", "not base64"),
    ],
)
async def test_a_malformed_authorization_header_is_400(rig, header, text):
    r = await rig()
    async with outside() as client:
        status, body = await answer(
            await client.get(f"{r.url}/metrics", headers={"Authorization": header})
        )
        assert status == 400
        assert text in body["error"]


async def test_a_failing_auth_handler_is_500_without_its_text(rig, caplog):
    r = await rig()
    r.policy.handlers["http_server_validate_auth_basic"] = _raise(
        PolicyError("secret-db-password wrong")
    )
    async with outside() as client:
        with caplog.at_level(logging.ERROR, "kumoq.http"):
            response = await client.get(f"{r.url}/metrics", headers=basic("u", "p"))
            status, body = await answer(response)
    assert status == 500
    assert "secret" not in json.dumps(body)
    assert "secret-db-password wrong" in caplog.text


async def test_an_auth_info_table_is_accepted_with_its_groups(rig):
    r = await rig()
    r.policy.handlers["http_server_validate_auth_basic"] = lambda u, p: {
        "identities": [{"identity": u, "context": "HttpBasicAuth"}],
        "groups": ["senders"],
    }
    r.policy.handlers["http_message_generated"] = lambda msg, auth: None
    async with outside() as client:
        response = await client.post(f"{r.url}/api/inject/v1", json=RAW, headers=basic("ann", ""))
        assert (await answer(response))[0] == 200
    (msg,) = r.reception.admitted
    assert msg.meta["http_auth"] == "ann"
    name, (_, auth) = r.policy.calls[-1]
    assert name == "http_message_generated"
    assert auth == {
        "peer_address": "127.0.0.2",
        "identities": [{"identity": "ann", "context": "HttpBasicAuth"}],
        "groups": ["senders"],
    }


# -- injection ------------------------------------------------------------------------------


async def test_inject_makes_one_message_per_recipient_with_kumomtas_meta(rig):
    r = await rig()
    seen: list[Any] = []
    r.policy.handlers["http_message_generated"] = lambda msg, auth: seen.append(auth)
    request = {**RAW, "recipients": [*RAW["recipients"], {"email": "b@example.com", "name": "B"}]}
    async with aiohttp.ClientSession() as client:
        status, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=request))
    assert (status, body) == (
        200,
        {"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []},
    )
    first, second = r.reception.admitted
    assert first.meta == {
        "http_auth": "127.0.0.1",
        "reception_protocol": "HTTP",
        "received_from": "127.0.0.1",
        "received_via": "127.0.0.1",
        "hostname": "h.test",
        "extra": {"k": "v"},
    }
    assert "extra" not in second.meta
    assert first.data is not None
    assert first.data.endswith(b"Subject: hi A\r\nMIME-Version: 1.0\r\n\r\nHello A\r\n")
    assert [str(m.recipient) for m in r.reception.admitted] == ["a@example.com", "b@example.com"]
    assert str(first.sender) == "sender@example.com"
    assert seen[0]["groups"] == ["kumomta:http-listener-trusted-ip"]


async def test_a_policy_rejection_fails_only_that_recipient(rig):
    r = await rig()

    def generated(msg: Message, auth: Any) -> None:
        if msg.recipient.local_part == "bad":
            raise RejectError(550, "5.7.1 not this one")

    r.policy.handlers["http_message_generated"] = generated
    request = {**RAW, "recipients": [{"email": "bad@example.com"}, {"email": "ok@example.com"}]}
    async with aiohttp.ClientSession() as client:
        _, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=request))
    assert body == {
        "success_count": 1,
        "fail_count": 1,
        "failed_recipients": ["bad@example.com"],
        "errors": ["bad@example.com: 550 5.7.1 not this one"],
    }


async def test_a_policy_error_fails_that_recipient_with_a_generic_text(rig, caplog):
    """The Lua error's text and file:line go to the log, never to the HTTP client."""
    r = await rig()

    def generated(msg: Message, auth: Any) -> None:
        if msg.recipient.local_part == "bad":
            raise PolicyError("init.lua:7: secret table is nil", location="init.lua:7")

    r.policy.handlers["http_message_generated"] = generated
    request = {**RAW, "recipients": [{"email": "bad@example.com"}, {"email": "ok@example.com"}]}
    async with aiohttp.ClientSession() as client:
        _, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=request))
    assert body["success_count"] == 1
    assert body["errors"] == [
        "bad@example.com: 451 4.3.0 technical difficulties: http_message_generated failed"
    ]
    assert "init.lua:7: secret table is nil" in caplog.text


async def test_gzip_and_deflate_bodies(rig):
    r = await rig()
    data = json.dumps(RAW).encode()
    bodies = {
        "gzip": gzip.compress(data),
        "deflate": zlib.compress(data),
        "x-gzip": gzip.compress(data),
    }
    raw_deflate = zlib.compressobj(wbits=-15)
    bodies["deflate "] = raw_deflate.compress(data) + raw_deflate.flush()  # raw, as some send
    async with aiohttp.ClientSession() as client:
        for encoding, body in bodies.items():
            response = await client.post(
                f"{r.url}/api/inject/v1",
                data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": encoding},
            )
            assert await answer(response) == (
                200,
                {"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []},
            ), encoding
    assert len(r.reception.admitted) == 4


@pytest.mark.parametrize(
    ("body", "headers", "status", "text"),
    [
        (b'{"envelope_sender": ', {}, 400, "malformed JSON: Expecting value at line 1 column 21"),
        (b"\xff\xfe{}", {}, 400, "malformed JSON"),
        (b"[1]", {}, 400, "expected a JSON object"),
        (json.dumps({**RAW, "extra": 1}).encode(), {}, 400, "unknown field 'extra'"),
        (
            json.dumps({k: v for k, v in RAW.items() if k != "recipients"}).encode(),
            {},
            400,
            "missing field 'recipients'",
        ),
        (json.dumps(RAW).encode(), {"Content-Type": "text/plain"}, 415, "application/json"),
        (json.dumps(RAW).encode(), {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "does not decode as gzip"),
        (gzip.compress(b"{}")[:-4], {"Content-Encoding": "gzip"}, 400, "truncated"),
        (
            json.dumps({**RAW, "content": "Subject: {% if %}\n\nx"}).encode(),
            {},
            422,
            "failed parsing field 'content' as template",
        ),
        (
            json.dumps({**RAW, "content": {"subject": "only"}}).encode(),
            {},
            422,
            "at least one of text_body",
        ),
    ],
)
async def test_each_bad_request_gets_a_json_answer(rig, body, headers, status, text):
    r = await rig()
    async with aiohttp.ClientSession() as client:
        response = await client.post(
            f"{r.url}/api/inject/v1",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        got_status, answer_body = await answer(response)
    assert got_status == status
    assert text in answer_body["error"]
    assert r.reception.admitted == []


async def test_a_bad_field_is_named(rig):
    r = await rig()
    request = {**RAW, "recipients": [{"email": "a@example.com"}, {"mail": "b@example.com"}]}
    async with aiohttp.ClientSession() as client:
        status, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=request))
    assert status == 400
    assert body["field"] == "recipients[1].mail"


async def test_bodies_over_the_limit_are_413_plain_or_compressed(rig):
    r = await rig(request_body_limit=4096)
    big = json.dumps({**RAW, "substitutions": {"pad": "x" * 5000}}).encode()
    bomb = gzip.compress(b'{"a": "' + b"0" * 3_000_000 + b'"}')
    assert len(bomb) < 4096
    async with aiohttp.ClientSession() as client:
        for body, headers in ((big, {}), (bomb, {"Content-Encoding": "gzip"})):
            response = await client.post(
                f"{r.url}/api/inject/v1",
                data=body,
                headers={"Content-Type": "application/json", **headers},
            )
            status, answer_body = await answer(response)
            assert status == 413
            assert "length limit exceeded" in answer_body["error"]


async def test_inject_is_503_before_the_spool_is_ready(rig):
    r = await rig()
    r.reception.is_ready = False
    async with aiohttp.ClientSession() as client:
        status, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=RAW))
    assert (status, body) == (503, {"error": "waiting for spool startup"})


async def test_unknown_routes_and_methods_are_json(rig):
    r = await rig()
    async with aiohttp.ClientSession() as client:
        status, body = await answer(await client.get(f"{r.url}/api/nothing"))
        assert (status, body) == (404, {"error": "no such endpoint: GET /api/nothing"})
        response = await client.get(f"{r.url}/api/inject/v1")
        status, body = await answer(response)
        assert status == 405
        assert "allowed: POST" in body["error"]
        assert response.headers["Allow"] == "POST"


async def test_an_internal_error_is_500_with_a_generic_text_and_logged(rig, caplog):
    r = await rig()
    r.reception.fail_with = RuntimeError("/var/spool/secret path exploded")
    async with aiohttp.ClientSession() as client:
        with caplog.at_level(logging.ERROR, "kumoq.http"):
            status, body = await answer(await client.post(f"{r.url}/api/inject/v1", json=RAW))
    assert status == 500
    assert "secret" not in body["error"]
    assert "internal error" in body["error"]
    assert "/var/spool/secret path exploded" in caplog.text


async def test_https_with_the_configured_certificate(rig, tmp_path, caplog):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    with caplog.at_level(logging.INFO, "kumoq.http"):
        r = await rig(use_tls=True, tls_certificate=str(cert_path), tls_private_key=str(key_path))
    assert "https listener on 127.0.0.1:" in caplog.text
    context = ssl.create_default_context()
    ca.configure_trust(context)
    host, port = r.listener.address
    async with aiohttp.ClientSession() as client:
        response = await client.get(f"https://{host}:{port}/api/check-liveness/v1", ssl=context)
        assert await answer(response) == (200, {"status": "OK"})


async def test_https_with_a_self_signed_certificate(rig):
    r = await rig(use_tls=True, hostname="mx.test")  # no certificate: KumoMTA makes one
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, port = r.listener.address
    async with aiohttp.ClientSession() as client:
        response = await client.get(f"https://{host}:{port}/api/check-liveness/v1", ssl=context)
        assert await answer(response) == (200, {"status": "OK"})
    pem = await asyncio.to_thread(ssl.get_server_certificate, (host, port))
    assert x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string() == "CN=mx.test"


def _raise(exc: BaseException) -> Callable[..., Any]:
    def handler(*args: Any) -> Any:
        raise exc

    return handler
