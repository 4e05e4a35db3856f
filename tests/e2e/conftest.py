"""Fixtures the end-to-end tests share. ``sink``: the switchable aiosmtpd sink of
tests/e2e/admin_support.py (a module may define its own ``sink`` instead, as
test_smtp_relay.py does). ``sink_of``: counting sinks of a handler class of the test's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.admin_support import SwitchSink, running_sink
from tests.e2e.test_smtp_relay import CountingController, Sink, free_port


@pytest.fixture
def sink() -> Iterator[SwitchSink]:
    with running_sink() as started:
        yield started


@pytest.fixture
def sink_of() -> Iterator[Callable[..., Any]]:
    """A factory: ``sink_of(HandlerClass)`` starts a counting sink (test_smtp_relay's ``Sink``
    or a subclass) and returns its handler, with ``port`` and ``baseline`` set; every sink is
    stopped at teardown."""
    controllers: list[CountingController] = []

    def start(cls: type[Sink] = Sink) -> Any:
        handler = cls()
        controller = CountingController(handler, hostname="127.0.0.1", port=free_port())
        controller.start()
        controllers.append(controller)
        handler.port = controller.port  # type: ignore[attr-defined]
        handler.baseline = handler.connections  # type: ignore[attr-defined]  # start() connects once
        return handler

    yield start
    for controller in controllers:
        controller.stop()
