"""kumoq.worker_limits: throttles and connection limits the workers of one box share through
files, without redis. Two ``WorkerSharedState`` objects on one directory stand for two workers
(each opens its own files, so their flocks exclude each other as two processes' do); a real
child process killed with SIGKILL shows that a dead worker's lease is freed."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.throttle import Leases, Limits, Refused, Throttle
from kumoq.worker_limits import RETRY, WorkerSharedState, open_worker_throttles
from kumoq.workers import WorkerSlot

NOW = 1_700_000_000.0


def spec(text: str) -> ThrottleSpec:
    return ThrottleSpec.parse("t", text)


async def test_two_workers_share_one_gcra_state(tmp_path: Path) -> None:
    a, b = WorkerSharedState(tmp_path), WorkerSharedState(tmp_path)
    rate = spec("4/s")
    admitted = []
    for i in range(8):  # alternately, at one instant: the burst of 4 is the box's
        worker = a if i % 2 == 0 else b
        result = await worker.check_async("path", rate, NOW)
        assert result is not None
        admitted.append(not result.throttled)
    assert admitted == [True] * 4 + [False] * 4
    later = await b.check_async("path", rate, NOW + 0.25)  # T = 0.25 s
    assert later is not None
    assert not later.throttled
    await a.close()
    await b.close()


async def test_the_same_answers_as_the_local_backend(tmp_path: Path) -> None:
    state, local = WorkerSharedState(tmp_path), Throttle()
    rate = spec("3/min,max_burst=2")
    for step in range(12):
        now = NOW + step * 7.5
        shared = await state.check_async("k", rate, now)
        assert shared == local.check("k", rate, now)
    await state.close()


async def test_a_limit_holds_across_workers_and_a_release_frees_a_slot(tmp_path: Path) -> None:
    a, b = WorkerSharedState(tmp_path), WorkerSharedState(tmp_path)
    two = LimitSpec(limit=2)
    first = await a.acquire_async("kumomta.connection_limit.q", two, 60.0)
    second = await b.acquire_async("kumomta.connection_limit.q", two, 60.0)
    assert not isinstance(first, Refused | None)
    assert not isinstance(second, Refused | None)
    assert await a.acquire_async("kumomta.connection_limit.q", two, 60.0) == Refused(
        "kumomta.connection_limit.q", RETRY
    )
    assert await b.extend_async("kumomta.connection_limit.q", second, 60.0) is True
    await b.release_async("kumomta.connection_limit.q", second)
    third = await a.acquire_async("kumomta.connection_limit.q", two, 60.0)
    assert not isinstance(third, Refused | None)
    # another key has slots of its own
    assert not isinstance(await a.acquire_async("other", LimitSpec(limit=1), 60.0), Refused)


async def test_limits_through_the_files_tell_this_workers_waiters_at_once(tmp_path: Path) -> None:
    limits = Limits(shared=WorkerSharedState(tmp_path))
    one = LimitSpec(limit=1)
    held = await limits.acquire([("key", one)])
    assert isinstance(held, Leases)
    refused = await limits.acquire([("key", one)])
    assert refused == Refused("key", RETRY)
    told: list[str] = []
    limits.local.on_release("key", 1, lambda: told.append("freed"))
    await held.release()
    assert told == ["freed"]
    assert isinstance(await limits.acquire([("key", one)]), Leases)


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


async def test_a_worker_that_dies_gives_its_slot_back(tmp_path: Path) -> None:
    state = WorkerSharedState(tmp_path)
    one = LimitSpec(limit=1)
    lease = await state.acquire_async("key", one, 60.0)
    assert not isinstance(lease, Refused | None)
    await state.release_async("key", lease)
    slot = next(tmp_path.glob("l-*.0"))  # noqa: ASYNC240 - the test's own files
    with subprocess.Popen(  # noqa: ASYNC220 - a real process that dies holding a lease
        [sys.executable, "-c", HOLDER, str(slot)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "held"
            assert isinstance(await state.acquire_async("key", one, 60.0), Refused)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            child.kill()
    assert not isinstance(await state.acquire_async("key", one, 60.0), Refused | None)


async def test_files_that_fail_fall_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "shared"
    throttle = await open_worker_throttles(None, Throttle(), WorkerSlot(0, 2, tmp_path, "t"))
    assert (tmp_path / "shared").is_dir()
    shutil.rmtree(directory)
    (tmp_path / "shared").write_text("not a directory")  # every file open now fails
    caplog.set_level(logging.WARNING, "kumoq.throttle")
    assert not (await throttle.throttle.throttle("fresh", spec("1/h"), NOW)).throttled
    leases = await throttle.limits.acquire([("k", LimitSpec(limit=1))])
    assert isinstance(leases, Leases)  # taken in the worker's own state
    warnings = [r for r in caplog.records if "each worker uses its own state" in r.message]
    assert len(warnings) == 1
    # the first check was answered by the worker's own GCRA: the second is throttled there
    assert (await throttle.throttle.throttle("fresh", spec("1/h"), NOW)).throttled
    assert throttle.backend is not None
    await throttle.backend.close()


async def test_alone_or_with_redis_no_files_are_used(tmp_path: Path) -> None:
    alone = await open_worker_throttles(None, Throttle(), None)
    assert alone.backend is None
    one = await open_worker_throttles(None, Throttle(), WorkerSlot(0, 1, tmp_path, "t"))
    assert one.backend is None
    assert not (tmp_path / "shared").exists()


async def test_synchronous_checks_are_shared_too(tmp_path: Path) -> None:
    """The scheduled queue's max_message_rate is checked synchronously (Throttle.check)."""
    slot_a, slot_b = WorkerSlot(0, 2, tmp_path, "t"), WorkerSlot(1, 2, tmp_path, "t")
    a = await open_worker_throttles(None, Throttle(), slot_a)
    b = await open_worker_throttles(None, Throttle(), slot_b)
    rate = spec("2/min")
    assert not a.throttle.check("schedq-q-message-rate", rate, NOW).throttled
    assert not b.throttle.check("schedq-q-message-rate", rate, NOW).throttled
    assert a.throttle.check("schedq-q-message-rate", rate, NOW).throttled
    assert b.throttle.check("schedq-q-message-rate", rate, NOW).throttled
    assert not a.throttle.check("schedq-q-message-rate", spec("local:2/min"), NOW).throttled
    for shared in (a, b):
        assert shared.backend is not None
        await shared.backend.close()
