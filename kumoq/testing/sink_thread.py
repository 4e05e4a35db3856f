"""A smart sink on its own event loop in a background thread, for synchronous code (the
``smart_sink`` pytest fixture, a script).

``SinkThread(options).start()`` returns once the sink listens; ``counts`` and ``messages()``
may be read from any thread; ``stop()`` drains the sink and joins the thread. The loop is
uvloop's when it is installed, as the daemon's is.

Imports asyncio, threading and the sibling kumoq.testing.sink and .sink_store.
"""

from __future__ import annotations

import asyncio
import email.message
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, final

from kumoq.testing.sink import SinkOptions, SmartSink
from kumoq.testing.sink_store import maildir_files, read_maildir
from kumoq.testing.traffic import loop_factory

__all__ = ["SinkThread"]

T = TypeVar("T")


@final
class SinkThread:
    """A ``SmartSink`` served from a thread. Also a context manager."""

    def __init__(self, options: SinkOptions) -> None:
        self.options = options
        self._sink: SmartSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._final: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> SinkThread:
        if self._thread is not None:
            raise RuntimeError("the sink is already running")
        started: Future[None] = Future()
        self._final = None
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="kumoq-smart-sink", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise
        return self

    def _serve(self, started: Future[None]) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                self._sink = await SmartSink(self.options).start()
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            await self._stopped.wait()
            self._final = await self._sink.close()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Drain and stop the sink; returns its final counts."""
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None:
            return self._final or {}
        if loop is not None and stopped is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopped.set)
        thread.join(timeout)
        self._thread = None
        return self._final or {}

    def __enter__(self) -> SinkThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking at it ---------------------------------------------------------------------
    def _call(self, fn: Callable[[SmartSink], T]) -> T:
        sink, loop = self._sink, self._loop
        if sink is None or loop is None or self._thread is None:
            raise RuntimeError("the sink is not running")

        async def call() -> T:
            return fn(sink)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    @property
    def address(self) -> tuple[str, int]:
        return self._call(lambda sink: sink.address)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def target(self) -> str:
        """``host:port``, as ``kumoq traffic-gen --target`` and ``mx_list`` take it."""
        host, port = self.address
        return f"{host}:{port}"

    @property
    def counts(self) -> dict[str, Any]:
        """The counts now (``SinkCounts.snapshot``); the final ones once stopped."""
        if self._thread is None:
            return dict(self._final or {})
        return self._call(lambda sink: sink.counts())

    @property
    def maildir(self) -> Path:
        if self.options.maildir is None:
            raise RuntimeError("this sink does not store mail (maildir=None)")
        return self.options.maildir

    def message_files(self) -> list[Path]:
        return maildir_files(self.maildir)

    def messages(self) -> list[email.message.Message]:
        """The stored messages, parsed, oldest first (``Delivered-To`` names the recipient)."""
        return read_maildir(self.maildir)

    def wait_for(self, accepted: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``accepted`` messages were accepted; returns the counts then."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts
            if counts.get("accepted", 0) >= accepted:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the sink accepted {counts.get('accepted', 0)} of {accepted} messages "
                    f"in {timeout}s: {counts}"
                )
            time.sleep(0.05)
