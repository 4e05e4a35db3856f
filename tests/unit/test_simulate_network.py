"""The simulator's two seams: the virtual-time loop and the network behind it.

- Without a ``Network``, ``VirtualLoop.create_connection`` is asyncio's own: a real socket
  still carries bytes (the default path the unit tests and everything else rely on).
- With one, kumoq's real SMTP client (``SmtpClientSession``) talks to a simulated peer, which
  answers by its ``Behaviour`` on virtual time: banners, PIPELINING groups, outcomes by share,
  421 when busy, a hang-up after ``max_messages_per_connection``.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumoq.clock import FakeClock
from kumoq.config.egress import UNSPECIFIED_SOURCE, EgressPathConfig
from kumoq.delivery.smtp import ConnectFailure, DeliveryOutcome, SmtpClientSession
from kumoq.logs.records import RecordType
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.simulate import virtual_loop
from kumoq.simulate.destination import SimulatedNetwork, _end_of_data
from kumoq.simulate.scenario import Behaviour, Destination, Window
from kumoq.simulate.virtual_loop import VirtualLoop, run_virtual
from tests.unit import virtual_time

PATH = EgressPathConfig()


def destination(**behaviour: Any) -> Destination:
    windows = behaviour.pop("windows", ())
    return Destination(
        name="peer.example",
        domains=("peer.example",),
        mx=("mx.peer.example",),
        addresses=("192.0.2.25",),
        behaviour=Behaviour(**behaviour),
        windows=windows,
    )


def message(clock: FakeClock) -> Message:
    return Message(
        id=new_spool_id(clock.now()),
        sender=EnvelopeAddress.parse("s@sender.example"),
        recipients=[EnvelopeAddress.parse("r@peer.example")],
        data=b"Subject: hi\r\n\r\n.starts with a dot\r\nbody\r\n",
    )


def run(dest: Destination, main: Any, seed: int = 1) -> tuple[Any, SimulatedNetwork]:
    clock = FakeClock()
    network = SimulatedNetwork((dest,), elapsed=clock.monotonic, rng=random.Random(seed))
    return run_virtual(clock, lambda: main(clock), network), network


async def open_session(clock: FakeClock) -> SmtpClientSession | ConnectFailure:
    return await SmtpClientSession.connect(
        "mx.peer.example", "192.0.2.25", 25, path=PATH, source=UNSPECIFIED_SOURCE,
        ehlo_domain="me.example",
    )  # fmt: skip


def test_the_test_helper_is_the_package_loop():
    assert virtual_time.run_virtual is virtual_loop.run_virtual


def test_without_a_network_the_loop_connects_as_asyncio_does():
    """The default path: a real socket, through asyncio's own create_connection."""
    clock = FakeClock()
    ours, theirs = socket.socketpair()

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        got: asyncio.Future[bytes] = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.set_result(data)

        transport, _ = await loop.create_connection(Reader, sock=ours)
        theirs.sendall(b"hello over a real socket")
        async with asyncio.timeout(5):
            data = await got
        transport.close()
        await asyncio.sleep(0)
        return data

    try:
        assert run_virtual(clock, main) == b"hello over a real socket"
    finally:
        theirs.close()


def test_with_a_network_only_host_and_port_connections_are_simulated():
    clock = FakeClock()
    network = SimulatedNetwork((destination(),), elapsed=clock.monotonic, rng=random.Random(1))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="host and port only, not with ssl"):
            await loop.create_connection(asyncio.Protocol, "192.0.2.25", 25, ssl=True)
        with pytest.raises(ConnectionRefusedError, match=r"nothing simulated at 192\.0\.2\.99"):
            await loop.create_connection(asyncio.Protocol, "192.0.2.99", 25)

    run_virtual(clock, main, network)


def test_the_smtp_client_delivers_to_a_simulated_peer_on_virtual_time():
    async def main(clock: FakeClock) -> tuple[float, float, list[DeliveryOutcome], str]:
        session = await open_session(clock)
        assert isinstance(session, SmtpClientSession)
        connected = clock.monotonic()
        assert session.pipelining
        outcomes = [await session.deliver(message(clock)) for _ in range(3)]
        took = clock.monotonic() - connected
        text = outcomes[-1].recipients[0].response.content
        await session.quit()
        return connected, took, outcomes, text

    (connected, took, outcomes, text), network = run(
        destination(latency=1.0, command_latency=0.1), main
    )
    assert connected == pytest.approx(0.2)  # the banner, then the EHLO reply
    # Each message: one PIPELINING group (RSET, MAIL, RCPT, DATA) and the final dot.
    assert took == pytest.approx(3 * (0.1 + 1.0))
    assert [o.recipients[0].disposition for o in outcomes] == [RecordType.Delivery] * 3
    assert text == "OK queued"
    stats = network.servers["peer.example"].stats
    assert (stats.sessions, stats.accepted, stats.peak_sessions) == (1, 3, 1)


def test_outcomes_follow_the_shares():
    async def main(clock: FakeClock) -> list[RecordType]:
        session = await open_session(clock)
        assert isinstance(session, SmtpClientSession)
        kinds = []
        for _ in range(1000):
            outcome = await session.deliver(message(clock))
            kinds.append(outcome.recipients[0].disposition)
        return kinds

    kinds, network = run(destination(latency=0.0, tempfail=0.2, permfail=0.1), main)
    assert kinds.count(RecordType.TransientFailure) == pytest.approx(200, abs=40)
    assert kinds.count(RecordType.Bounce) == pytest.approx(100, abs=30)
    stats = network.servers["peer.example"].stats
    assert stats.tempfailed == kinds.count(RecordType.TransientFailure)
    assert stats.permfailed == kinds.count(RecordType.Bounce)


def test_a_busy_peer_answers_421_and_a_window_refuses_until_it_ends():
    async def main(clock: FakeClock) -> list[str]:
        first = await open_session(clock)
        second = await open_session(clock)
        assert isinstance(first, SmtpClientSession)
        assert isinstance(second, ConnectFailure)
        assert second.response is not None
        busy = second.response.one_line()
        await first.quit()
        await asyncio.sleep(100 - clock.monotonic())  # into the window
        refused = await open_session(clock)
        assert isinstance(refused, ConnectFailure)
        assert refused.response is not None
        await asyncio.sleep(200 - clock.monotonic())  # after it
        again = await open_session(clock)
        assert isinstance(again, SmtpClientSession)
        await again.quit()
        return [busy, refused.response.one_line()]

    blocked = Behaviour(max_connections=1, refuse="421 4.7.0 go away")
    replies, network = run(destination(max_connections=1, windows=(
        Window(start=100, end=200, behaviour=blocked),
    )), main)  # fmt: skip
    assert replies == ["421 4.7.0 too many connections, try again later", "421 4.7.0 go away"]
    stats = network.servers["peer.example"].stats
    assert (stats.sessions, stats.refused_busy, stats.refused_window) == (2, 1, 1)


def test_an_open_session_gets_the_refusal_at_its_next_mail():
    async def main(clock: FakeClock) -> tuple[RecordType, str, bool]:
        session = await open_session(clock)
        assert isinstance(session, SmtpClientSession)
        await asyncio.sleep(10)
        outcome = await session.deliver(message(clock))
        first = outcome.recipients[0]
        return first.disposition, first.response.content, session.closed

    blocked = Behaviour(refuse="421 4.7.0 blocked now")
    (kind, text, closed), _ = run(
        destination(windows=(Window(start=5, end=50, behaviour=blocked),)), main
    )
    assert (kind, text, closed) == (RecordType.TransientFailure, "blocked now", True)


def test_the_peer_hangs_up_after_max_messages_per_connection():
    async def main(clock: FakeClock) -> tuple[bool, bool]:
        session = await open_session(clock)
        assert isinstance(session, SmtpClientSession)
        for _ in range(2):
            outcome = await session.deliver(message(clock))
            assert outcome.recipients[0].disposition is RecordType.Delivery
        await asyncio.sleep(0.01)
        reusable = session.reusable
        session.abort()
        await asyncio.sleep(0)
        return reusable, session.closed

    (reusable, closed), network = run(destination(max_messages_per_connection=2), main)
    assert (reusable, closed) == (False, True)
    stats = network.servers["peer.example"].stats
    assert stats.hung_up_after_limit == 1


def test_an_unreachable_peer_refuses_the_connection():
    async def main(clock: FakeClock) -> str:
        failed = await open_session(clock)
        assert isinstance(failed, ConnectFailure)
        return failed.reason

    reason, network = run(destination(unreachable=True), main)
    assert "mx.peer.example is unreachable" in reason
    assert network.servers["peer.example"].stats.unreachable == 1


def test_zone_texts_give_mx_and_addresses():
    clock = FakeClock()
    auto = Destination(name="auto.example", domains=("auto.example", "alias.example"),
                       mx=("mx.auto.example",), addresses=(), behaviour=Behaviour())  # fmt: skip
    network = SimulatedNetwork((destination(), auto), elapsed=clock.monotonic, rng=random.Random(1))
    (text,) = network.zone_texts()
    lines = set(text.splitlines())
    assert "peer.example. 300 IN MX 10 mx.peer.example." in lines
    assert "mx.peer.example. 300 IN A 192.0.2.25" in lines
    assert "peer.example. 300 IN A 192.0.2.25" in lines  # an mx_list naming the domain works
    assert "alias.example. 300 IN MX 10 mx.auto.example." in lines
    assert "mx.auto.example. 300 IN A 10.0.2.25" in lines


# --- the lean turn: asyncio's order, in fewer steps ------------------------------------------


def _timer_storm(debug: bool, network: bool) -> list[tuple[float, int]]:
    """Timers at colliding times that cancel each other and schedule more, some ``call_soon``
    callbacks among them: what ran, when, in order."""
    clock = FakeClock()
    rng = random.Random(7)
    ran: list[tuple[float, int]] = []
    net = SimulatedNetwork((), elapsed=clock.monotonic, rng=random.Random(1))
    loop = VirtualLoop(clock, net if network else None)
    loop.set_debug(debug)
    assert loop.get_debug() is debug

    async def main() -> None:
        handles: list[asyncio.TimerHandle] = []
        done = loop.create_future()
        left = [400]

        def fire(n: int) -> None:
            ran.append((clock.monotonic(), n))
            left[0] -= 1
            if left[0] == 0:
                done.set_result(None)
                return
            roll = rng.random()
            if roll < 0.2 and handles:
                handles.pop(rng.randrange(len(handles))).cancel()
            if roll < 0.5:
                loop.call_soon(fire, n + 1000)
            delay = rng.choice([0.0, 0.5, 1.0, 1.0, 2.5])  # many ties
            handles.append(loop.call_later(delay, fire, n + 1))

        handles.extend(
            loop.call_at(rng.choice([1.0, 2.0, 3.0]), fire, n * 10_000) for n in range(40)
        )
        await done
        for handle in handles:
            handle.cancel()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return ran


@pytest.mark.parametrize("network", [True, False])
def test_the_lean_turn_runs_callbacks_in_asyncios_order(network: bool):
    """Out of debug mode the loop keeps its own heap and turn; in debug mode it is asyncio's.
    Both run the same callbacks at the same virtual times in the same order, ties included."""
    lean = _timer_storm(debug=False, network=network)
    own = _timer_storm(debug=True, network=network)
    assert len(lean) >= 400
    assert lean == own


def test_debug_mode_cannot_change_while_timers_wait():
    clock = FakeClock()
    loop = VirtualLoop(clock, SimulatedNetwork((), elapsed=clock.monotonic, rng=random.Random(1)))
    try:
        loop.set_debug(True)  # nothing pending: the loop is asyncio's from now on
        loop.set_debug(False)
        loop.call_later(1.0, lambda: None)
        with pytest.raises(RuntimeError, match="cannot change with timers pending"):
            loop.set_debug(True)
    finally:
        loop.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80).map(lambda b: bytes(b".\r\n.x"[c % 5] for c in b)))
def test_the_end_of_data_is_the_first_crlf_dot_crlf(data: bytes):
    assert _end_of_data(data) == data.find(b"\r\n.\r\n")


def test_the_end_of_data_after_many_dots():
    prose = b"One. Two. Three.\r\n" * 10  # more dots than are looked at one by one
    assert _end_of_data(prose + b"\r\n.\r\n") == len(prose)
    assert _end_of_data(prose + b"\r\n..\r\n.\r\n") == len(prose) + 4
    assert _end_of_data(prose) == -1
