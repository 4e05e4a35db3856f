"""``kumoq traffic-gen``: generate mail into an MTA and measure what it answers.

``await generate(options)`` sends ``count`` messages to ``target`` over SMTP (pipelined, several
messages per connection, ``concurrency`` connections at once; ``traffic_smtp.py``) or, with
``http``, through ``POST /api/inject/v1`` (``traffic_http.py``), and returns a
``TrafficSummary``: sent, accepted, tempfailed, permfailed, errors, elapsed, msgs/s and the
latency percentiles. ``run_traffic(options)`` does the same from synchronous code (a test),
on a loop of its own in a thread when the caller's thread already runs one.

Progress goes to ``progress`` (a text stream; the command line passes stderr): a bar redrawn
five times a second on a terminal, a plain line every ``PLAIN_EVERY`` seconds otherwise.

The messages (sizes, weighted domains, headers, ``X-Campaign``) are ``traffic_message.py``'s;
the counting is ``traffic_run.py``'s. Raises ``TargetUnreachable`` when nothing could be sent
because no connection could be made.

Imports asyncio, aiohttp and the sibling traffic modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Final, TextIO, TypeVar

import aiohttp

from kumoq.testing.traffic_http import http_sender, inject_url
from kumoq.testing.traffic_message import MessageFactory, MessageSpec
from kumoq.testing.traffic_run import Pacer, TrafficRun, TrafficSummary
from kumoq.testing.traffic_smtp import smtp_sender

__all__ = [
    "TargetUnreachable",
    "TrafficOptions",
    "TrafficSummary",
    "generate",
    "loop_factory",
    "parse_target",
    "run_traffic",
]

PLAIN_EVERY: Final = 5.0
_BAR_EVERY: Final = 0.2
_BAR_WIDTH: Final = 30

T = TypeVar("T")


class TargetUnreachable(Exception):
    """No connection to the target could be made, so nothing was sent."""

    def __init__(self, summary: TrafficSummary) -> None:
        super().__init__(summary.unreachable or "the target is unreachable")
        self.summary = summary


def parse_target(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid target {text!r}: expected HOST:PORT")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficOptions:
    """One run. ``target`` (``host:port``) for SMTP, or ``http`` (a base URL or the inject
    URL) for the HTTP injection API. ``per_connection`` messages per SMTP connection and
    ``http_batch`` recipients per request are upper bounds: with few messages they shrink so
    that ``concurrency`` connections (requests) still share them. ``rate`` in messages per
    second (None: as fast as it goes); ``timeout`` bounds each reply (each request)."""

    target: str | None = None
    http: str | None = None
    count: int = 100
    concurrency: int = 10
    per_connection: int = 100
    http_batch: int = 100
    message: MessageSpec = field(default_factory=MessageSpec)
    rate: float | None = None
    timeout: float = 60.0
    ehlo: str = "traffic-gen.kumoq"

    def __post_init__(self) -> None:
        if (self.target is None) == (self.http is None):
            raise ValueError("give either a target (HOST:PORT, for SMTP) or an HTTP URL")
        if self.target is not None:
            parse_target(self.target)
        for name in ("count", "concurrency", "per_connection", "http_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate!r}")

    @property
    def mode(self) -> str:
        return "http" if self.http is not None else "smtp"


async def generate(options: TrafficOptions, progress: TextIO | None = None) -> TrafficSummary:
    """Send the run's messages; returns the summary. Raises ``TargetUnreachable``."""
    loop = asyncio.get_running_loop()
    spec = options.message
    if spec.run_id == MessageSpec().run_id:
        spec = replace(spec, run_id=uuid.uuid4().hex[:12])
    factory = MessageFactory(spec)
    if options.http is not None:
        target = inject_url(options.http)
    else:
        assert options.target is not None
        target = options.target
    run = TrafficRun(options.count, factory, Pacer(options.rate), target)
    run.started = time.monotonic()
    reporter = _Progress(run, progress, loop) if progress is not None else None
    if reporter is not None:
        reporter.start()
    try:
        if options.http is not None:
            await _over_http(run, options, target)
        else:
            host, port = parse_target(target)
            per_connection = _share(options.count, options.concurrency, options.per_connection)
            async with asyncio.TaskGroup() as group:
                for _ in range(min(options.concurrency, options.count)):
                    group.create_task(
                        smtp_sender(
                            run, host, port, per_connection=per_connection,
                            limit=options.timeout, ehlo=options.ehlo,
                        )
                    )  # fmt: skip
    finally:
        if reporter is not None:
            reporter.stop()
    summary = run.summary(options.mode, time.monotonic() - run.started)
    if run.unreachable is not None and run.sent == 0:
        raise TargetUnreachable(summary)
    return summary


async def _over_http(run: TrafficRun, options: TrafficOptions, url: str) -> None:
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        batch = _share(options.count, options.concurrency, options.http_batch)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(options.concurrency, options.count)):
                group.create_task(
                    http_sender(
                        run, session, url, sender=options.message.sender,
                        batch=batch, limit=options.timeout,
                    )
                )  # fmt: skip


def _share(count: int, concurrency: int, most: int) -> int:
    """Messages per connection (recipients per request): at most ``most``, and few enough
    that ``concurrency`` connections get some when ``count`` is small."""
    return max(1, min(most, -(-count // concurrency)))


def run_traffic(options: TrafficOptions, progress: TextIO | None = None) -> TrafficSummary:
    """``generate`` for synchronous callers; safe to call from a thread running a loop."""
    return _run_sync(generate(options, progress))


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    def run() -> T:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    done: Future[T] = Future()

    def in_thread() -> None:
        try:
            done.set_result(run())
        except BaseException as exc:
            done.set_exception(exc)

    thread = threading.Thread(target=in_thread, name="kumoq-traffic-gen", daemon=True)
    thread.start()
    thread.join()
    return done.result()


def loop_factory() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (as the daemon's), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Progress:
    """The live progress line (see the module docstring)."""

    def __init__(self, run: TrafficRun, stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.stream = stream
        self.loop = loop
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._task: asyncio.Task[None] | None = None
        self._last = (time.monotonic(), 0)
        self._rate = 0.0

    def start(self) -> None:
        self._task = self.loop.create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._draw(final=True)

    async def _loop(self) -> None:
        every = _BAR_EVERY if self.tty else PLAIN_EVERY
        while True:
            await asyncio.sleep(every)
            self._draw()

    def _draw(self, final: bool = False) -> None:
        run = self.run
        now = time.monotonic()
        done = run.answered + run.errors
        then, before = self._last
        if now > then:
            recent = (done - before) / (now - then)
            self._rate = recent if self._rate == 0.0 else 0.5 * self._rate + 0.5 * recent
        self._last = (now, done)
        counts = (
            f"{done}/{run.count} {self._rate:,.0f} msg/s  accepted {run.accepted} "
            f"tempfailed {run.tempfailed} permfailed {run.permfailed} errors {run.errors}"
        )
        with contextlib.suppress(OSError, ValueError):
            if self.tty:
                filled = int(_BAR_WIDTH * done / run.count) if run.count else _BAR_WIDTH
                bar = "#" * filled + "." * (_BAR_WIDTH - filled)
                end = "\n" if final else ""
                self.stream.write(f"\r[{bar}] {counts}\x1b[K{end}")
            elif not final:
                self.stream.write(f"traffic-gen: {counts}\n")
            self.stream.flush()
