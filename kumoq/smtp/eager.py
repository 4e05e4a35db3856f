"""Handler coroutines driven without asyncio's heavier helpers: finishing one that was stepped
eagerly by hand and then suspended (``drive_suspended``), and bounding one by a plain timer
(``bounded``).

The connection adapter (``smtp/connection.py``) starts the ``ehlo``/``mail_from``/``rcpt_to``
handler coroutines with ``coro.send(None)`` right in the protocol callback, so one that never
suspends costs no task and no loop round trip. One that does suspend yields the future it
waits on; ``drive_suspended`` finishes it inside a task, as ``asyncio.Task`` would have: it
waits for that future, resumes the coroutine so that the coroutine's own ``await`` returns or
raises the future's outcome, and passes a cancellation of the task on to the future and the
coroutine. ``bounded`` is ``asyncio.timeout()`` without its three ``getpid()`` syscalls.
Only public asyncio API is used (no ``Future`` internals), so it behaves the same on
asyncio's and uvloop's loops.

Imports: asyncio only. Must not import anything from kumoq.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

__all__ = ["bounded", "drive_suspended"]

_T = TypeVar("_T")


async def drive_suspended(coro: Coroutine[Any, Any, _T], yielded: Any) -> _T:
    """Continue ``coro``, which was stepped by hand and yielded ``yielded`` (the future it
    waits on, or None for a bare ``yield``), inside the current task; returns its result.

    Exceptions from the coroutine propagate. When the current task is cancelled while the
    coroutine waits, the future it waits on is cancelled (as ``Task.cancel`` cancels the
    future its task waits on) and the ``CancelledError`` is thrown into the coroutine, which
    may handle it and carry on."""
    loop = asyncio.get_running_loop()
    while True:
        error: BaseException | None = None
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0)): one loop round
                await asyncio.sleep(0)
            elif not asyncio.isfuture(yielded):
                error = RuntimeError(f"coroutine yielded {yielded!r}, not a future")
            elif yielded.get_loop() is not loop:
                error = RuntimeError(f"coroutine awaits {yielded!r}, attached to another loop")
            else:
                # Not ``await yielded``: the coroutine's own ``await`` already set the future
                # blocking, and a second await on it would fail. Wait for it from outside;
                # sending None below lets that ``await`` return (or raise) the outcome.
                await asyncio.wait((yielded,))
        except asyncio.CancelledError as exc:  # our task was cancelled while waiting
            if yielded is not None:  # a future (the other cases do not wait)
                yielded.cancel()
            error = exc
        try:
            yielded = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            return cast("_T", stop.value)


async def bounded(
    call: Awaitable[_T], seconds: float, expired: _T, loop: asyncio.AbstractEventLoop
) -> _T:
    """``await call``; once ``seconds`` have passed, the current task is cancelled and the
    result is ``expired``. A cancellation from elsewhere propagates as usual. ``loop`` is the
    running loop (asking asyncio for it costs a ``getpid()`` on Python 3.11)."""
    task = asyncio.current_task(loop)
    assert task is not None
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        if not task.done():
            timed_out = True
            task.cancel()

    deadline = loop.call_later(seconds, expire)
    try:
        return await call
    except asyncio.CancelledError:
        if not timed_out:
            raise
        task.uncancel()
        return expired
    finally:
        deadline.cancel()
