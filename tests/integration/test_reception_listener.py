"""Reception behind a real EsmtpListener: what the client is told when the listener cancels
DATA (issue 9, defect 2), and that the shutdown drain waits for the cancelled DATA to take its
messages back out of the spool before the daemon goes on to close the spool."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Callable

import pytest

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from tests.integration.smtp_server_support import smtplib_send
from tests.unit.test_reception import MemorySpool, Rig, _rig

pytestmark = pytest.mark.integration


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    memory = MemorySpool(hold=True)  # every store waits for release()
    made, manager = _rig(memory, memory)
    made.reception.set_ready()
    yield made
    await manager.close(drain_seconds=0)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def listen(rig: Rig, **config: object) -> EsmtpListener:
    mapping = {"listen": "127.0.0.1:0", "hostname": "mx.test", **config}
    return await start_esmtp_listener(EsmtpListenerConfig.from_mapping(mapping), rig.reception)


async def test_a_timeout_during_the_store_answers_451_once_the_store_is_undone(rig: Rig) -> None:
    listener = await listen(rig, data_processing_timeout=0.05)
    try:
        port = listener.address[1]
        sent = asyncio.ensure_future(asyncio.to_thread(smtplib_send, port, ["a@example.com"]))
        await until(lambda: rig.spool.in_flight == 1)
        await asyncio.sleep(0.2)  # well past the deadline: the DATA task has been cancelled
        assert not sent.done(), "answered while the write could still land"
        rig.spool.release()
        with pytest.raises(smtplib.SMTPDataError) as info:
            await sent
        assert info.value.smtp_code == 451
        assert info.value.smtp_error == b"4.4.5 data_processing_timeout exceeded"
        assert rig.spool.stored == {}
        assert rig.deliverer.calls == []
    finally:
        await listener.close(drain_seconds=1)


async def test_the_drain_waits_for_an_aborted_data_to_undo_its_store(rig: Rig) -> None:
    listener = await listen(rig)
    port = listener.address[1]
    sent = asyncio.ensure_future(asyncio.to_thread(smtplib_send, port, ["a@example.com"]))
    await until(lambda: rig.spool.in_flight == 1)
    closing = asyncio.ensure_future(listener.close(drain_seconds=0.05))
    await asyncio.sleep(1.5)  # the connection was aborted long ago
    assert not closing.done(), "the listener closed while a cancelled DATA could still store"
    rig.spool.release()
    await asyncio.wait_for(closing, 5)
    assert rig.spool.stored == {}, "the daemon would close the spool with the message in it"
    assert rig.deliverer.calls == []
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await sent
