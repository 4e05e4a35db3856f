"""Fixtures the end-to-end tests share. ``sink``: the switchable aiosmtpd sink of
tests/e2e/admin_support.py (a module may define its own ``sink`` instead, as
test_smtp_relay.py does)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.admin_support import SwitchSink, running_sink


@pytest.fixture
def sink() -> Iterator[SwitchSink]:
    with running_sink() as started:
        yield started
