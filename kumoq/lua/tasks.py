"""``kumo.spawn_task{event_name=, args=}``: a policy event run in the background.

KumoMTA starts a thread per task that fires the event once, with ``args`` as the handler's one
argument, and logs the error if the handler fails; tasks are not started when the policy is
only being validated. kumoq runs the task as an asyncio task on the daemon's event loop, in the
policy runtime that spawned it (``PolicyRuntime.invoke_async``): the handler may wait, with
``kumo.time.sleep`` or ``kumo.dns.lookup_mx``, while the daemon carries on, and each stretch
between two waits runs under the Lua time budget like any event.

Where no event loop runs (``kumoq validate``, a runtime loaded outside the daemon) nothing is
started, as KumoMTA does when validating; the event must still have a handler.

KumoMTA fires ``init`` once per process, and so its tasks start once. kumoq fires ``init``
again on every reload, so a task is started only if the same event with the same ``args`` is
not still running for the same policy file: the task keeps running the code it was started
with, as KumoMTA's does, until its handler returns.

L2: imports asyncio (tasks only), the standard library and kumoq.errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

from kumoq.errors import KumoqError

__all__ = ["TASKS", "BackgroundTasks"]

log = logging.getLogger("kumoq.lua.tasks")


@final
class BackgroundTasks:
    """The running tasks, by (policy file, event, args), so a reload does not start twins."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    def spawn(
        self, policy: str, event: str, args: Any, fire: Callable[[], Awaitable[object]]
    ) -> bool:
        """Start ``fire()`` on the running loop; False (nothing started) without a loop or
        when the same task still runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.debug("spawn_task %s: no event loop runs here (validation); not started", event)
            return False
        key = (policy, event, json.dumps(args, sort_keys=True, default=str))
        running = self._running.get(key)
        if running is not None and not running.done():
            log.info("spawn_task %s: already running since an earlier load of %s; kept",
                     event, policy)  # fmt: skip
            return False
        task = loop.create_task(self._run(event, fire), name=f"spawned-task-{event}")
        self._running[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        return True

    def _forget(self, key: tuple[str, str, str], task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]

    @staticmethod
    async def _run(event: str, fire: Callable[[], Awaitable[object]]) -> None:
        try:
            await fire()
        except KumoqError as exc:  # PolicyError, RejectError, LuaBudgetError
            log.error("Error while dispatching %s: %s", event, exc)
        except Exception:
            log.exception("Error while dispatching %s", event)

    def running(self) -> int:
        """How many tasks are running."""
        return sum(1 for t in self._running.values() if not t.done())


TASKS: Final = BackgroundTasks()
"""The process's background tasks."""
