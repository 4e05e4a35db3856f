"""kumo.http.build_client: requests from awaited handlers against a real aiohttp server on
127.0.0.1, and the errors a policy sees (refused connection, timeout, synchronous event)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.lua.http_api import HttpClientParams
from tests.unit.lua_kumo_support import load

POLICY = """
local kumo = require 'kumo'
kumo.on('post', function(url, body)
  local client = kumo.http.build_client { user_agent = 'kumoq-test' }
  local response = client
    :post(url)
    :header('Content-Type', 'application/json')
    :headers { ['X-One'] = '1' }
    :basic_auth('daniel', 'tiger')
    :body(body)
    :send()
  local headers = response:headers()
  client:close()
  return {
    response:status_code(), response:status_reason(), response:status_is_success(),
    response:status_is_server_error(), response:text(), headers['X-Echo'],
    headers['x-echo'], response:content_length(),
  }
end)
kumo.on('get', function(url)
  local response = kumo.http.build_client({}):get(url):timeout('5 seconds'):send()
  return { response:status_code(), response:status_reason(), response:text() }
end)
kumo.on('form', function(url)
  local r = kumo.http.build_client({}):put(url)
    :form_url_encoded { b = '2', a = 'x y' }:bearer_auth('tok'):send()
  return r:text()
end)
kumo.on('slow', function(url)
  return kumo.http.build_client({ timeout = 0.2 }):get(url):send():text()
end)
kumo.on('caught', function(url)
  local ok, err = pcall(function() return kumo.http.build_client({}):get(url):send() end)
  return { ok, tostring(err) }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  kumo.http.build_client({}):get('http://127.0.0.1:1/'):send()
end)
kumo.on('bad_client', function() return kumo.http.build_client { nope = 1 } end)
kumo.on('url', function(base) return kumo.http.build_url(base, { a = 1, b = 'x y' }) end)
"""

seen: list[dict[str, Any]] = []


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    seen.append({"method": request.method, "headers": dict(request.headers), "body": body})
    if request.path == "/fail":
        return web.Response(status=503, text="down for maintenance")
    if request.path == "/slow":
        await asyncio.sleep(3)  # well past the 0.2 s timeout
    return web.Response(text=f"got {body}", headers={"X-Echo": request.method})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    seen.clear()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(tmp_path: Path) -> tuple[PolicyRuntime, PolicyEvents]:
    rt = load(tmp_path, POLICY)
    return rt, PolicyEvents(rt)


async def fire(rt: PolicyRuntime, name: str, *args: str) -> Any:
    return await rt.invoke_async(name, "v" * len(args), *(rt.to_lua(a) for a in args))


async def test_post_sends_headers_auth_and_body_and_reads_the_response(tmp_path, server):
    rt, _ = events(tmp_path)
    result = await fire(rt, "post", f"{server}/log", '{"type":"Delivery"}')
    assert result == [200, "OK", True, False, 'got {"type":"Delivery"}', "POST", "POST", 23]
    (req,) = seen
    assert req["body"] == '{"type":"Delivery"}'
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["X-One"] == "1"
    assert req["headers"]["User-Agent"] == "kumoq-test"
    expected = base64.b64encode(b"daniel:tiger").decode()
    assert req["headers"]["Authorization"] == f"Basic {expected}"


async def test_a_server_error_is_a_response_not_an_error(tmp_path, server):
    rt, _ = events(tmp_path)
    assert await fire(rt, "get", f"{server}/fail") == [
        503,
        "Service Unavailable",
        "down for maintenance",
    ]


async def test_form_and_bearer_auth(tmp_path, server):
    rt, _ = events(tmp_path)
    assert await fire(rt, "form", f"{server}/form") == "got a=x+y&b=2"
    (req,) = seen
    assert req["method"] == "PUT"
    assert req["headers"]["Authorization"] == "Bearer tok"
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_a_refused_connection_is_an_error_at_the_send_line(tmp_path):
    rt, _ = events(tmp_path)
    url = f"http://127.0.0.1:{closed_port()}/log"
    ok, err = await fire(rt, "caught", url)
    assert ok is False
    assert f"kumo.http: GET {url} failed: " in err
    with pytest.raises(PolicyError) as info:
        await fire(rt, "post", url, "{}")
    assert info.value.location == "init.lua:11"  # the :send() line


async def test_a_timeout_is_an_error(tmp_path, server):
    rt, _ = events(tmp_path)
    with pytest.raises(PolicyError, match=r"no response within 0\.2s"):
        await fire(rt, "slow", f"{server}/slow")


def test_send_is_an_error_in_a_synchronous_event(tmp_path):
    _, ev = events(tmp_path)
    with pytest.raises(PolicyError, match="cannot wait in this event"):
        ev.get_queue_config("example.com", None, None, None)


def test_client_params_are_checked(tmp_path):
    _, ev = events(tmp_path)
    with pytest.raises(PolicyError, match="unknown key 'nope'"):
        ev.call("bad_client")
    assert HttpClientParams.from_mapping({"timeout": "2 minutes"}).timeout == 120.0


def test_build_url(tmp_path):
    _, ev = events(tmp_path)
    assert ev.call("url", "https://example.com/") == "https://example.com/?a=1&b=x+y"
    assert ev.call("url", "https://example.com/?e=v") == "https://example.com/?e=v&a=1&b=x+y"
