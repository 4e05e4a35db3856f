"""``HttpListener``: one ``start_http_listener`` bound with aiohttp on the daemon's loop.

The listener serves the ``Route``s it is given; each route module (liveness, inject, metrics,
and later the admin API) contributes its own, so a new endpoint is a new module and one line
in kumoq.http.server.

Around every route runs the errors middleware: an ``ApiError`` becomes its JSON answer;
aiohttp's own 404/405 become JSON too; any other exception is logged with its traceback and
answered ``500 {"error": "internal error..."}``, so no internal text reaches the client.
Then, before the route's handler, ``Authenticator`` (kumoq.http.auth) decides the caller's
``AuthInfo``, which the handler receives; a ``public`` route (liveness) needs no credentials.
(An unknown path is a 404 before any authentication.) A worker's private listener
(``worker_token``) lets in only the sibling workers that carry the run's token (auth
``sibling_auth``), on every route.

Bodies arrive as sent (``auto_decompress=False``): kumoq.http.body decompresses within the
``request_body_limit``. With ``use_tls`` the listener serves HTTPS from the PEM files. Once
bound it logs ``http listener on <addr>`` (``https`` with TLS), as KumoMTA does.

Shutdown has two steps. ``drain(seconds)`` makes liveness and injection answer 503
``shutting down`` and waits up to ``seconds`` for the requests in flight to end, while the
listener still answers (so a load balancer sees the 503). ``close()`` then stops accepting and
cancels what is still running after ``CLOSE_TIMEOUT`` (a cancelled injection takes its
unfinished batch back out of the spool: kumoq.reception).

Imports kumoq.http.auth, .availability and .errors, kumoq.config.http, kumoq.errors,
kumoq.workers and kumoq.smtp.tls (the self-signed certificate);
must not import the route modules or kumoq.http.server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kumoq.config.http import HttpListenerConfig
from kumoq.errors import ListenerError
from kumoq.http.auth import Authenticator, AuthInfo, sibling_auth
from kumoq.http.availability import Availability
from kumoq.http.errors import INTERNAL_ERROR, ApiError, json_error
from kumoq.smtp.tls import self_signed
from kumoq.workers import WORKER_TOKEN_HEADER

__all__ = ["Handler", "HttpListener", "Route", "format_addr", "local_ip", "peer_ip"]

log = logging.getLogger("kumoq.http")

#: Seconds ``close()`` gives requests still running after the drain before cancelling them.
CLOSE_TIMEOUT: Final = 1.0

#: A route's handler: the request and the caller's AuthInfo.
Handler = Callable[[web.Request, AuthInfo], Awaitable[web.StreamResponse]]
_Plain = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: ``method`` and ``path``, its ``handler``; ``public`` routes need no
    authentication (KumoMTA's default ACL opens only the liveness check to everyone)."""

    method: str
    path: str
    handler: Handler
    public: bool = False


def peer_ip(request: web.Request) -> str:
    """The connected peer's IP address (never a forwarded header)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def local_ip(request: web.Request) -> str:
    """The local IP address the request came in on."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return str(sock[0]) if isinstance(sock, tuple) and sock else ""


def format_addr(addr: Any) -> str:
    """``host:port``, or ``[v6host]:port``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = str(addr[0]), addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


class HttpListener:
    """One HTTP listener: ``await start()``; at shutdown ``await drain(s)``, ``await close()``."""

    def __init__(
        self,
        config: HttpListenerConfig,
        routes: Sequence[Route],
        authenticator: Authenticator,
        availability: Availability,
        *,
        reuse_port: bool = False,
        worker_token: str | None = None,
    ) -> None:
        self.config = config
        self.availability = availability
        self.reuse_port = reuse_port  # SO_REUSEPORT: kumoq serve --workers N
        # a worker's private listener: only sibling workers, by token (kumoq.http.fanout)
        self.worker_token = worker_token
        self.address: tuple[str, int] | None = None
        self._authenticator = authenticator
        self._app = web.Application(middlewares=[self._errors])
        for route in routes:
            self._app.router.add_route(route.method, route.path, self._authenticated(route))
        self._runner: web.AppRunner | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return self._in_flight

    async def start(self) -> None:
        """Bind ``config.listen`` and serve; raises ListenerError when that fails."""
        cfg = self.config
        context = _tls_context(cfg) if cfg.use_tls else None
        runner = web.AppRunner(
            self._app,
            access_log=None,
            auto_decompress=False,
            shutdown_timeout=CLOSE_TIMEOUT,
        )
        await runner.setup()
        host, port = cfg.address
        site = web.TCPSite(
            runner, host, port, ssl_context=context, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )  # fmt: skip
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenerError(f"http listener: failed to bind to {cfg.listen}: {exc}") from exc
        self._runner = runner
        addr = runner.addresses[0]
        self.address = (str(addr[0]), int(addr[1]))
        log.info("%s listener on %s", "https" if context else "http", format_addr(addr))

    def begin_shutdown(self) -> None:
        """From now on liveness and injection answer 503 ``shutting down``."""
        self.availability.stopping = True

    async def drain(self, drain_seconds: float) -> None:
        """Answer 503 ``shutting down`` from now on and wait up to ``drain_seconds`` for the
        requests in flight to end; the listener keeps answering meanwhile."""
        self.begin_shutdown()
        try:
            async with asyncio.timeout(drain_seconds):
                await self._idle.wait()
        except TimeoutError:
            log.warning("http listener: %d requests still running after %gs",
                        self._in_flight, drain_seconds)  # fmt: skip

    async def close(self) -> None:
        """Stop accepting; cancel what still runs after ``CLOSE_TIMEOUT`` seconds."""
        self.availability.stopping = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Plain) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_exception(request, exc)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return json_error(500, INTERNAL_ERROR)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _authenticated(self, route: Route) -> _Plain:
        """``route``'s handler behind the authenticator."""
        authenticate, trusts = self._authenticator.authenticate, self.config.trusts
        token = self.worker_token

        async def handle(request: web.Request) -> web.StreamResponse:
            ip = peer_ip(request)
            if token is not None:
                sibling = sibling_auth(ip, request.headers.get(WORKER_TOKEN_HEADER), token)
                return await route.handler(request, sibling)
            auth = await authenticate(
                ip, request.headers.get("Authorization"), trusted=trusts(ip), public=route.public
            )
            return await route.handler(request, auth)

        return handle


def _http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own error answers, as JSON."""
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    if isinstance(exc, web.HTTPNotFound):
        message = f"no such endpoint: {request.method} {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {exc.method} is not allowed on {request.path}; allowed: {allowed}"
    else:
        message = exc.text or exc.reason
    return json_error(exc.status, message, headers=headers)


def _tls_context(cfg: HttpListenerConfig) -> ssl.SSLContext:
    """The server context from the PEM files (validated as paths by the config table), or
    from a self-signed certificate for ``hostname`` when neither is given, as KumoMTA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        if cfg.tls_certificate is None:
            cert, key = self_signed(cfg.hostname)
            with tempfile.TemporaryDirectory(prefix="kumoq-tls-") as scratch:  # mode 0700
                certfile, keyfile = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
                certfile.write_bytes(cert)
                keyfile.write_bytes(key)
                context.load_cert_chain(certfile, keyfile)
        else:
            context.load_cert_chain(str(cfg.tls_certificate), str(cfg.tls_private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(
            f"http listener {cfg.listen}: cannot load tls_certificate {cfg.tls_certificate!r} "
            f"and tls_private_key {cfg.tls_private_key!r}: {exc}"
        ) from exc
    return context
