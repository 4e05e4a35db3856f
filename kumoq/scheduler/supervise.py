"""Supervision of the scheduler's long-running tasks, and the waits they share.

A maintainer (a scheduled queue's, or the process-wide wheel's) that raises is logged, counted
in ``supervised_task_restarts{task}`` and started again after a backoff of 1 s doubling to 30 s
while it keeps failing; the count of failures in a row resets once it has run for 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from kumoq.clock import Clock
from kumoq.message import Message
from kumoq.metrics import SUPERVISED_TASK_RESTARTS

__all__ = [
    "MAINTAINER_TASK",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "SINGLETON_TASK",
    "restart_backoff",
    "supervise",
    "wait_for_batch",
    "wait_or_timeout",
]

log = logging.getLogger("kumoq.queue")

RESTART_BACKOFF: Final = 1.0  # the first wait after a failure; doubles while failures go on
RESTART_BACKOFF_MAX: Final = 30.0

MAINTAINER_TASK: Final = "queue_maintainer"  # SUPERVISED_TASK_RESTARTS labels
SINGLETON_TASK: Final = "singleton_wheel"


def restart_backoff(failures: int) -> float:
    """The wait after the ``failures``-th failure in a row: 1 s, 2 s, 4 s, ... at most 30 s."""
    return min(RESTART_BACKOFF * 2.0 ** min(max(failures, 1) - 1, 16), RESTART_BACKOFF_MAX)


async def supervise(
    maintain: Callable[[], Coroutine[Any, Any, None]], what: str, task: str
) -> None:
    """Run ``maintain()``; when it raises, log and count it and start it again after a backoff
    (the count of failures in a row resets once it has run for ``RESTART_BACKOFF_MAX``)."""
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        started = loop.time()
        try:
            await maintain()
            return
        except Exception:
            failures = 1 if loop.time() - started > RESTART_BACKOFF_MAX else failures + 1
            delay = restart_backoff(failures)
            log.exception("%s failed; restarting it in %.0f s", what, delay)
            SUPERVISED_TASK_RESTARTS.labels(task=task).inc()
            await asyncio.sleep(delay)


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass (no task per wait, unlike wait_for)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def wait_for_batch(batch: list[Message], clock: Clock) -> None:
    latest = max(m.due or 0.0 for m in batch)
    delay = latest - clock.now()
    if delay > 0:
        await asyncio.sleep(delay)
