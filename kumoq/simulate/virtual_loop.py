"""An asyncio event loop on a FakeClock: time moves only when the loop would otherwise wait.

``run_virtual(clock, main)`` runs ``main()`` on a ``VirtualLoop`` whose ``time()`` is the
FakeClock's monotonic time. Whenever the loop has nothing ready and would block until its next
timer, the clock jumps to that timer instead of sleeping, so timer-driven code (the
scheduler's maintainers, ``call_later``, ``asyncio.sleep``, ``asyncio.timeout``) runs at full
speed and deterministically, and ``clock.now()`` (what kumoq reads) agrees with the loop's
timers. Real IO is still polled. Nothing may depend on another thread: the loop cannot tell
such a wait from idleness.

The network is the loop's second seam. Given a ``Network``, ``loop.create_connection`` (what
``kumoq.delivery.client_connection`` calls to reach an MX host) asks it for the connection
instead of opening a socket, so the SMTP client, the ready queues and the dispatchers above it
run unchanged against a simulated peer (``kumoq.simulate.destination``). Without one, the loop
connects as asyncio does. This is trio's ``FakeNet`` idea: the layer that owns sockets is the
one that is replaced, and nothing above it knows.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import selectors
from asyncio import events
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar, TypeVarTuple

from kumoq.clock import FakeClock

__all__ = ["Network", "VirtualLoop", "run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_MAX_STEP: Final = 24 * 3600.0
"""The longest jump of the clock in one turn (asyncio's ``MAXIMUM_SELECT_TIMEOUT``)."""
_CLEANUP_MIN: Final = 100
_CLEANUP_SHARE: Final = 0.5
"""asyncio's thresholds for sweeping cancelled timers out of the heap at once."""


class Network(Protocol):
    """Where a ``VirtualLoop`` opens outbound connections (the loop owns this seam).

    ``open_connection`` builds the protocol with ``protocol_factory``, connects it to a
    transport for ``host:port`` (calling ``connection_made``) and returns both, as
    ``loop.create_connection`` does; it raises ``OSError`` when nothing answers there.
    """

    async def open_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        local_addr: tuple[str, int] | None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]: ...


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: FakeClock, poll: bool) -> None:
        super().__init__()
        self._clock = clock
        self._poll = poll

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0) if self._poll else []
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled and nothing to wait for")
        self._clock.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector loop whose time is ``clock``'s, and whose connections go to ``network``
    when one is given. With a network nothing real is polled (no socket can be open, and
    asking the kernel each turn would cost a system call)."""

    def __init__(self, clock: FakeClock, network: Network | None = None) -> None:
        super().__init__(_VirtualSelector(clock, poll=network is None))
        self._network = network
        self._clock = clock
        self._lean: bool = getattr(self, "_lean", True)  # set_debug ran in __init__
        # The loop asks the time several times a turn: the clock's own method, not a wrapper.
        self.time = clock.monotonic  # type: ignore[method-assign]

    # -- the turn ------------------------------------------------------------------------------
    #
    # A simulation makes about a million turns of one or two callbacks each, and as many
    # timers: asyncio's bookkeeping for them was a tenth of the run. Out of debug mode the
    # methods below do BaseEventLoop's work in fewer Python steps, in the same order: the heap
    # holds ``(when, timer)`` pairs, which compare in C where TimerHandles call ``__lt__``
    # (a tie on ``when`` compares the timers, which are never less than each other: a pair
    # heap orders exactly as asyncio's heap of timers does); cancelled timers are swept as
    # asyncio sweeps them. They use BaseEventLoop's private state (_ready, _scheduled, ...), as
    # the standard library's loops do. In debug mode the loop is asyncio's own.

    def set_debug(self, enabled: bool) -> None:
        """Debug mode is asyncio's own loop: it can change only while no timer is pending."""
        lean = not enabled
        if getattr(self, "_lean", lean) != lean and self._timers():
            raise RuntimeError("the virtual loop's debug mode cannot change with timers pending")
        super().set_debug(enabled)
        self._lean = lean

    def _timers(self) -> list[Any]:
        loop: Any = self
        timers: list[Any] = loop._scheduled
        return timers

    def call_soon(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """``loop.call_soon``."""
        loop: Any = self
        if not self._lean or loop._closed:
            return super().call_soon(callback, *args, context=context)
        handle = _Handle(callback, args, self, context)
        loop._ready.append(handle)
        return handle

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """``loop.call_at``."""
        loop: Any = self
        if not self._lean or loop._closed or when is None:
            return super().call_at(when, callback, *args, context=context)
        timer = _TimerHandle(when, callback, args, self, context)
        heapq.heappush(loop._scheduled, (when, timer))
        timer._scheduled = True
        return timer

    def call_later(
        self,
        delay: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """``loop.call_later``."""
        if not self._lean or delay is None:
            return super().call_later(delay, callback, *args, context=context)
        return self.call_at(self._clock.monotonic() + delay, callback, *args, context=context)

    def _run_once(self) -> None:
        """One turn: when nothing is ready, the clock jumps to the first timer; the timers
        due then, and the callbacks ready, run in asyncio's order."""
        if not self._lean:
            super()._run_once()  # type: ignore[misc]
            return
        loop: Any = self
        scheduled: list[Any] = loop._scheduled
        count = len(scheduled)
        if count > _CLEANUP_MIN and loop._timer_cancelled_count / count > _CLEANUP_SHARE:
            kept = []
            for entry in scheduled:
                if entry[1]._cancelled:
                    entry[1]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            loop._scheduled = scheduled = kept
            loop._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0][1]._cancelled:
                loop._timer_cancelled_count -= 1
                heapq.heappop(scheduled)[1]._scheduled = False
        ready = loop._ready
        clock = self._clock
        if self._network is None:  # real IO is polled: asyncio's way, through the selector
            timeout = None
            if ready or loop._stopping:
                timeout = 0.0
            elif scheduled:
                timeout = min(max(0.0, scheduled[0][0] - clock.monotonic()), _MAX_STEP)
            loop._process_events(loop._selector.select(timeout))
        elif not ready and not loop._stopping:
            if not scheduled:
                raise RuntimeError("virtual time: nothing scheduled and nothing to wait for")
            step = scheduled[0][0] - clock.monotonic()
            if step > 0:
                clock.advance(min(step, _MAX_STEP))
        end = clock.monotonic() + loop._clock_resolution
        while scheduled and scheduled[0][0] < end:
            timer = heapq.heappop(scheduled)[1]
            timer._scheduled = False
            ready.append(timer)
        popleft = ready.popleft
        for _ in range(len(ready)):
            handle = popleft()
            if not handle._cancelled:
                handle._run()

    async def create_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """``loop.create_connection``: through the ``Network`` when there is one (plain TCP
        to ``host:port`` only), else asyncio's own."""
        network = self._network
        if network is None:
            # typeshed splits host/port and sock into overloads; asyncio takes either here.
            connect = super().create_connection
            return await connect(protocol_factory, host, port, **kwargs)  # type: ignore[arg-type]
        local_addr: tuple[str, int] | None = kwargs.pop("local_addr", None)
        if host is None or port is None or kwargs:  # kumoq's client passes local_addr only
            unsupported = sorted(k for k, v in kwargs.items() if v is not None)
            if host is None or port is None or unsupported:
                raise ValueError(
                    "a simulated network connects to host and port only, not with "
                    + (", ".join(unsupported) or "no address")
                )
        return await network.open_connection(protocol_factory, host, port, local_addr)


class _Handle(events.Handle):
    """A ready callback, made without asking the loop whether it is in debug mode."""

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        _fill(self, callback, args, loop, context)


def _fill(
    handle: events.Handle,
    callback: Callable[..., object],
    args: tuple[Any, ...],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context | None,
) -> None:
    """What ``Handle.__init__`` sets, without its debug-mode question to the loop."""
    handle._context = context if context is not None else contextvars.copy_context()  # type: ignore[attr-defined]
    handle._loop = loop  # type: ignore[attr-defined]
    handle._callback = callback  # type: ignore[attr-defined]
    handle._args = args
    handle._cancelled = False
    handle._repr = None  # type: ignore[attr-defined]
    handle._source_traceback = None  # type: ignore[attr-defined]


class _TimerHandle(events.TimerHandle):
    """A timer, made as ``_Handle`` is."""

    __slots__ = ()

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        _fill(self, callback, args, loop, context)
        self._when = when
        self._scheduled = False

    def cancel(self) -> None:
        """``TimerHandle.cancel``, in one step."""
        timer: Any = self  # asyncio's own attributes, untyped in typeshed
        if not timer._cancelled:
            if timer._scheduled:
                timer._loop._timer_cancelled_count += 1
            timer._cancelled = True
            timer._callback = None
            timer._args = None


def run_virtual(
    clock: FakeClock,
    main: Callable[[], Coroutine[Any, Any, T]],
    network: Network | None = None,
) -> T:
    """Run ``main()`` to completion on a virtual-time loop driven by ``clock`` (and connecting
    through ``network`` when given)."""
    loop = VirtualLoop(clock, network)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
