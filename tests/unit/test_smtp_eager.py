"""Tests of kumoq.smtp.eager.drive_suspended on asyncio's and uvloop's loops.

Each coroutine is stepped once by hand from a loop callback, outside any task, exactly as
``SmtpConnection._step`` does, and finished with ``drive_suspended`` in a task. What is checked
is that it behaves as if the coroutine had run in a task of its own: the awaited future's value
or exception arrives at the coroutine's ``await``, a cancelled task cancels the future it waits
on and throws ``CancelledError`` into the coroutine, and ``asyncio.timeout`` works after the
first suspension.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import pytest
import uvloop

from kumoq.smtp.eager import drive_suspended

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture(params=[asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]:
    """``run(main)`` runs ``main()`` to completion on a fresh loop of the parametrized kind."""
    factory: LoopFactory = request.param

    def runner(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


Run = Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]


async def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Step ``coro`` once from a loop callback (no current task), as the connection does; it
    must suspend. Returns the task that finishes it with ``drive_suspended``."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Task[Any]] = loop.create_future()

    def step() -> None:
        assert asyncio.current_task() is None
        yielded = coro.send(None)
        started.set_result(loop.create_task(drive_suspended(coro, yielded)))

    loop.call_soon(step)
    return await started


@types.coroutine
def bare_yield() -> Generator[None, None, None]:
    """What ``asyncio.sleep(0)`` does: yield None to the task once."""
    yield


def test_a_value(run: Run) -> None:
    async def main() -> tuple[Any, bool]:
        fut = asyncio.get_running_loop().create_future()

        async def handler() -> Any:
            return await fut * 2

        task = await start_eagerly(handler())
        await asyncio.sleep(0.01)
        assert not task.done()  # really waiting on ``fut``
        fut.set_result(21)
        return await task, fut.cancelled()

    assert run(main) == (42, False)


def test_an_exception_arrives_at_the_await(run: Run) -> None:
    async def main() -> tuple[str, BaseException | None]:
        loop = asyncio.get_running_loop()
        caught, uncaught = loop.create_future(), loop.create_future()

        async def handler() -> str:
            try:
                await caught
            except ValueError as exc:
                return f"caught {exc}"
            return "no exception"

        async def failing() -> None:
            await uncaught

        first = await start_eagerly(handler())
        second = await start_eagerly(failing())
        caught.set_exception(ValueError("inside"))
        uncaught.set_exception(KeyError("through"))
        await asyncio.wait((first, second))
        return first.result(), second.exception()

    text, exc = run(main)
    assert text == "caught inside"
    assert isinstance(exc, KeyError)
    assert exc.args == ("through",)


def test_cancelling_the_task_cancels_the_future_and_the_coroutine(run: Run) -> None:
    """As ``Task.cancel`` does: the future the coroutine waits on is cancelled too, and the
    coroutine sees ``CancelledError`` (with the message) at its ``await``."""

    async def main() -> tuple[bool, bool, tuple[Any, ...]]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seen: list[tuple[Any, ...]] = []

        async def handler() -> None:
            try:
                await fut
            except asyncio.CancelledError as exc:
                seen.append(exc.args)
                raise

        task = await start_eagerly(handler())
        await asyncio.sleep(0.01)
        task.cancel("shutting down")
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled(), fut.cancelled(), seen[0]

    assert run(main) == (True, True, ("shutting down",))


def test_a_coroutine_that_handles_its_cancellation_carries_on(run: Run) -> None:
    async def main() -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        second: asyncio.Future[str] = loop.create_future()

        async def handler() -> str:
            with contextlib.suppress(asyncio.CancelledError):
                await first
            return await second

        task = await start_eagerly(handler())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.01)
        assert not task.done()
        second.set_result("after the cancellation")
        return await task, first.cancelled()

    assert run(main) == ("after the cancellation", True)


def test_several_suspensions_in_a_row(run: Run) -> None:
    """Futures, bare yields, sleeps, another task and an Event, one after another."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(3)]
        event = asyncio.Event()

        async def other() -> str:
            await asyncio.sleep(0.001)
            return "task"

        async def handler() -> list[Any]:
            got: list[Any] = [await futures[0]]
            await bare_yield()
            got.append(await futures[1])
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            got.append(await asyncio.create_task(other()))
            await event.wait()
            try:
                await futures[2]
            except LookupError as exc:
                got.append(repr(exc))
            return got

        task = await start_eagerly(handler())
        for i, fut in enumerate(futures[:2]):
            await asyncio.sleep(0.005)
            fut.set_result(i)
        await asyncio.sleep(0.01)
        event.set()
        await asyncio.sleep(0.005)
        futures[2].set_exception(LookupError("last"))
        got: list[Any] = await task
        return got

    assert run(main) == [0, 1, "task", "LookupError('last')"]


def test_asyncio_timeout_after_the_first_suspension(run: Run) -> None:
    """``asyncio.timeout`` cancels the task that runs ``drive_suspended``; the wait is cancelled
    and the coroutine gets TimeoutError, then goes on."""

    async def main() -> tuple[str, bool]:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handler() -> str:
            await asyncio.sleep(0)  # from here on, inside the task
            try:
                async with asyncio.timeout(0.01):
                    await never
            except TimeoutError:
                return "timed out"
            return "not timed out"

        task = await start_eagerly(handler())
        return await task, never.cancelled()

    assert run(main) == ("timed out", True)


def test_a_bad_yield_is_an_error_in_the_coroutine(run: Run) -> None:
    @types.coroutine
    def bad() -> Generator[Any, None, None]:
        yield 42

    async def main() -> BaseException | None:
        async def handler() -> None:
            await bad()

        task = await start_eagerly(handler())
        await asyncio.wait((task,))
        return task.exception()

    exc = run(main)
    assert isinstance(exc, RuntimeError)
    assert "yielded 42, not a future" in str(exc)


def test_closing_the_loop_while_suspended_leaves_nothing_pending(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner cancels the task at shutdown: the future goes with it, and no task is
    destroyed while pending."""
    futures: list[asyncio.Future[None]] = []

    async def main() -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        futures.append(fut)

        async def handler() -> None:
            await fut

        await start_eagerly(handler())
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(main)
        gc.collect()
    assert futures[0].cancelled()
    assert "destroyed but it is pending" not in caplog.text
