"""The Python side of ``kumo.http`` (KumoMTA's docs/reference/kumo.http/): the request itself.

``kumo_http.lua`` (beside this module) defines the Client, Request and Response objects in Lua.
``request:send()`` yields the request (a plain table: ``method``, ``url``, ``headers`` as
``{name, value}`` pairs, ``body`` or ``form``, ``basic_auth`` or ``bearer_auth``, ``timeout``
in seconds, ``user_agent``, ``insecure``) to the event coroutine; the runtime's ``Waits``
hands it to the ``http`` op registered here (``Waits.ops``), which performs it with aiohttp
while the event loop carries on. So a request can be sent from the events kumoq awaits (SMTP
events, custom Lua delivery, ``should_enqueue_log_record``, spawned tasks); in a synchronous
event (``get_queue_config``, the egress events) ``send()`` is an error the policy may
``pcall``.

The answer is the Response's data: ``status``, ``reason`` (the standard phrase, or nil),
``headers`` (lowercase names; repeated headers joined with ``, ``), ``content_length``,
``text`` (decoded by the ``charset`` of ``Content-Type``, UTF-8 by default, malformed
sequences replaced) and ``bytes``. A request that fails (connection refused, a timeout, a bad
URL) is a Lua error at the ``send()`` line naming the method, the URL and the cause; in custom
Lua delivery that is a ``TransientFailure``, retried with the queue's backoff.

Each request gets its own aiohttp session (kumoq keeps no connection pool between requests:
``pool_idle_timeout`` and ``connection_verbose`` are accepted and have no effect).

L2: imports aiohttp, kumoq.config.values (durations) and the sibling modules message
(LuaApiError) and waits (the op's type); never the runtime.
"""

from __future__ import annotations

import base64
import http
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from kumoq.config.values import build, parse_bool, parse_duration, parse_str
from kumoq.errors import ConfigError
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits

__all__ = ["DEFAULT_TIMEOUT", "HttpApiRuntime", "HttpClientParams", "python_api", "send"]

DEFAULT_TIMEOUT: Final = 60.0
"""Seconds a request may take, unless the client or the request sets ``timeout``."""


class HttpApiRuntime(Protocol):
    """What ``kumo.http`` needs of the policy runtime."""

    @property
    def waits(self) -> Waits: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def _positive_duration(key: str, value: Any) -> float:
    seconds = parse_duration(key, value)
    if seconds <= 0:
        raise ConfigError(f"{key}: must be greater than zero, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpClientParams:
    """``kumo.http.build_client{...}``'s keys (KumoMTA's names and defaults)."""

    user_agent: str | None = None
    connection_verbose: bool = False
    pool_idle_timeout: float = 90.0
    timeout: float = DEFAULT_TIMEOUT
    accept_invalid_certs: bool = False

    @classmethod
    def from_mapping(cls, mapping: Any) -> HttpClientParams:
        return build(
            cls,
            "kumo.http.build_client",
            mapping,
            {
                "user_agent": parse_str,
                "connection_verbose": parse_bool,
                "pool_idle_timeout": _positive_duration,
                "timeout": _positive_duration,
                "accept_invalid_certs": parse_bool,
            },
        )


def _headers(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs = spec.get("headers") or []
    out = [(str(name), str(value)) for name, value in pairs]
    agent = spec.get("user_agent")
    if agent and not any(name.lower() == "user-agent" for name, _ in out):
        out.append(("User-Agent", str(agent)))
    basic = spec.get("basic_auth")
    if isinstance(basic, Mapping):
        pair = f"{basic.get('user', '')}:{basic.get('password') or ''}".encode()
        out.append(("Authorization", "Basic " + base64.b64encode(pair).decode()))
    bearer = spec.get("bearer_auth")
    if isinstance(bearer, str):
        out.append(("Authorization", f"Bearer {bearer}"))
    if spec.get("form") is not None:
        out.append(("Content-Type", "application/x-www-form-urlencoded"))
    return out


def _body(spec: Mapping[str, Any]) -> bytes | None:
    form = spec.get("form")
    if isinstance(form, Mapping):
        return urllib.parse.urlencode(sorted(form.items())).encode()
    body = spec.get("body")
    return None if body is None else str(body).encode("utf-8", "surrogateescape")


def _reason(status: int) -> str | None:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return None


async def send(spec: Mapping[str, Any]) -> tuple[bool, Any]:
    """Perform one request (the table ``request:send()`` yields, as data); ``(True, the
    Response's data)`` or ``(False, error text)``."""
    method = str(spec.get("method", "GET"))
    url = str(spec.get("url", ""))
    timeout = spec.get("timeout")
    seconds = float(timeout) if isinstance(timeout, int | float) else DEFAULT_TIMEOUT
    try:
        headers = _headers(spec)
        body = _body(spec)
        connector = aiohttp.TCPConnector(ssl=False) if spec.get("insecure") else None
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=seconds)
            ) as session,
            session.request(method, url, headers=headers, data=body) as resp,
        ):
            raw = await resp.read()
            charset = resp.charset or "utf-8"
            try:
                text = raw.decode(charset, errors="replace")
            except LookupError:  # an unknown charset
                text = raw.decode("utf-8", errors="replace")
            names: dict[str, str] = {}
            for name, value in resp.headers.items():
                key = name.lower()
                names[key] = f"{names[key]}, {value}" if key in names else value
            return True, {
                "status": resp.status,
                "reason": _reason(resp.status),
                "headers": names,
                "content_length": resp.content_length,
                "text": text,
                "bytes": raw,
            }
    except TimeoutError:
        return False, f"kumo.http: {method} {url}: no response within {seconds:g}s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        cause = str(exc) or type(exc).__name__
        return False, f"kumo.http: {method} {url} failed: {cause}"


def python_api(rt: HttpApiRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind ``kumo.http``; registers the ``http`` op in ``rt.waits``."""

    async def http_op(arg: Any) -> tuple[bool, Any]:
        try:
            spec = rt.from_lua(arg)
        except (LuaApiError, UnicodeDecodeError) as exc:
            return False, f"kumo.http: cannot send this request: {exc}"
        if not isinstance(spec, Mapping):
            return False, "kumo.http: expected a Request"
        ok, value = await send(spec)
        if not ok:
            return ok, value
        try:
            return True, rt.to_lua(value)
        except LuaApiError as exc:
            return False, f"kumo.http: cannot hand the response to the policy: {exc}"

    rt.waits.ops["http"] = http_op

    def client(params: Any) -> Any:
        p = HttpClientParams.from_mapping(rt.from_lua(params, config=True))
        return rt.to_lua(
            {
                "timeout": p.timeout,
                "user_agent": p.user_agent,
                "insecure": p.accept_invalid_certs,
            }
        )

    def duration(value: Any) -> float:
        return _positive_duration("request:timeout", value)

    def build_url(base: str, params: Any) -> str:
        data = rt.from_lua(params)
        if not isinstance(data, Mapping):
            raise LuaApiError("expected a table of parameters")
        query = urllib.parse.urlencode(
            [(str(k), "true" if v is True else "false" if v is False else str(v))
             for k, v in sorted(data.items())]
        )  # fmt: skip
        if not query:
            return base
        return f"{base}{'&' if '?' in base else '?'}{query}"

    return {
        "kumo_http_client": rt.guard("kumo.http.build_client", client),
        "kumo_http_duration": rt.guard("kumo.http", duration),
        "kumo_http_build_url": rt.guard("kumo.http.build_url", build_url),
    }
