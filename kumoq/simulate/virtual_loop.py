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
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from kumoq.clock import FakeClock

__all__ = ["Network", "VirtualLoop", "run_virtual"]

T = TypeVar("T")


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
        # The loop asks the time several times a turn: the clock's own method, not a wrapper.
        self.time = clock.monotonic  # type: ignore[method-assign]

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
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and k != "local_addr")
        if host is None or port is None or unsupported:
            raise ValueError(
                "a simulated network connects to host and port only, not with "
                + (", ".join(unsupported) or "no address")
            )
        local_addr: tuple[str, int] | None = kwargs.get("local_addr")
        return await network.open_connection(protocol_factory, host, port, local_addr)


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
