"""Fixtures of the kumoq.smtp.server tests (test_smtp_server*.py): ``handler``, a fresh
FakeHandler, and ``start``, which starts listeners on 127.0.0.1 and closes them afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from tests.integration.smtp_server_support import FakeHandler, Start


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def start(handler: FakeHandler) -> AsyncIterator[Start]:
    """``await start(**config)`` -> a running listener on 127.0.0.1:<free port>."""
    listeners: list[EsmtpListener] = []

    async def make(**kw: Any) -> EsmtpListener:
        mapping = {"listen": "127.0.0.1:0", "hostname": "mx.test", **kw}
        listener = await start_esmtp_listener(EsmtpListenerConfig.from_mapping(mapping), handler)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        await listener.close(drain_seconds=2)
