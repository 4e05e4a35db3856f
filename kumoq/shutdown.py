"""How long a graceful shutdown may take, and the watchdog that enforces it.

``ShutdownBounds`` comes from ``KUMOQ_SHUTDOWN_*`` (docs/operations.md#shutdown): 25 s for the
listeners to drain, 25 s for deliveries in flight, 10 s to flush; 60 s in all. Past the total
a watchdog thread ends the process, even with the event loop stuck.

L3: imported by the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kumoq.config.values import parse_duration
from kumoq.errors import ConfigError

__all__ = ["GRACE", "SHUTDOWN_ENV", "ShutdownBounds", "shutdown_bounds", "watchdog", "within"]

log = logging.getLogger("kumoq.daemon")


@dataclass(frozen=True, slots=True)
class ShutdownBounds:
    """How long each shutdown phase may take, in seconds (docs/operations.md#shutdown).

    ``total`` (60 s by default) bounds SIGTERM to exit: past it a watchdog ends the process
    (status 1). ``flush`` covers the maildir writer, the spool's and the logs' last batch,
    and the unwinding (``GRACE``) of what the drains aborted."""

    listener_drain: float = 25.0
    delivery_drain: float = 25.0
    flush: float = 10.0

    @property
    def total(self) -> float:
        return self.listener_drain + self.delivery_drain + self.flush


GRACE: Final = 2.0
SHUTDOWN_ENV: Final = {
    "listener_drain": "KUMOQ_SHUTDOWN_LISTENER_DRAIN",
    "delivery_drain": "KUMOQ_SHUTDOWN_DELIVERY_DRAIN",
    "flush": "KUMOQ_SHUTDOWN_FLUSH",
}


def shutdown_bounds(environ: Mapping[str, str]) -> ShutdownBounds:
    """The bounds from the environment: seconds (``2.5``) or a duration (``30s``)."""
    values: dict[str, float] = {}
    for key, name in SHUTDOWN_ENV.items():
        text = environ.get(name, "").strip()
        if text:
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = parse_duration(name, text)
            if not 0 <= values[key] < math.inf:
                raise ConfigError(f"{name}: expected seconds >= 0 or a duration, got {text!r}")
    return ShutdownBounds(**values)


def watchdog(bound: float, waiting_for: list[str]) -> threading.Timer:
    """End the process if the shutdown overruns ``bound``, even with the event loop stuck.
    Every message that got 250 is on disk; log records still queued are lost."""

    def overrun() -> None:
        log.error("shutdown: not complete after its bound of %gs, still waiting for %s; "
                  "exiting now (messages not delivered stay spooled for the next start)",
                  bound, waiting_for[0])  # fmt: skip
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(bound, overrun)
    timer.daemon = True
    timer.start()
    return timer


async def within(seconds: float, awaitable: Awaitable[Any]) -> None:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        log.error("shutdown: the listeners did not close within %gs; going on", seconds)
