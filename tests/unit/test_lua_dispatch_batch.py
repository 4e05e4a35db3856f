"""custom_lua batches: plan_batch, LuaDispatch's batch assembly (fake runtime, FakeClock), the
runtime's conn_send_batch with real Lua, and the batch keys' validation."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.config.queue import CustomLuaProtocol, QueueConfig
from kumoq.egress.lua_dispatch import Idle, LuaDispatch, SendNow, WaitFor, plan_batch
from kumoq.errors import ConfigError, PolicyError, RejectError
from kumoq.logs.records import RecordType
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.scheduler.attempt import Attempt


def make_msg(user: str, domain: str = "hook.test") -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse(f"{user}@{domain}")],
        data=b"Subject: hi\r\n\r\nbody\r\n",
    )


def lua_config(batch_size=3, min_batch_size=1, max_batch_latency=0.0) -> QueueConfig:
    return QueueConfig(
        protocol=CustomLuaProtocol(
            constructor="make.hook",
            batch_size=batch_size,
            min_batch_size=min_batch_size,
            max_batch_latency=max_batch_latency,
        )
    )


# -- plan_batch --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "min_batch", "latency", "waiting", "age", "expected"),
    [
        (3, 1, 0.0, 0, 0.0, Idle()),
        (3, 1, 0.0, 1, 0.0, SendNow(1)),
        (3, 1, 0.0, 7, 0.0, SendNow(3)),  # never more than batch_size
        (3, 3, 1.0, 2, 0.0, WaitFor(1.0)),
        (3, 3, 1.0, 2, 0.25, WaitFor(0.75)),
        (3, 3, 1.0, 2, 1.0, SendNow(2)),  # the latency has passed: send what is there
        (3, 3, 1.0, 3, 0.0, SendNow(3)),
        (3, 3, 0.0, 1, 0.0, SendNow(1)),  # latency 0: at once
        (5, 2, 10.0, 4, 0.0, SendNow(4)),  # enough: take what waits, up to batch_size
        (1, 1, 0.0, 4, 0.0, SendNow(1)),
    ],
)
def test_plan_batch(batch, min_batch, latency, waiting, age, expected):
    protocol = CustomLuaProtocol(
        constructor="c", batch_size=batch, min_batch_size=min_batch, max_batch_latency=latency
    )
    assert plan_batch(waiting, 100.0, 100.0 + age, protocol) == expected


# -- LuaDispatch with a fake runtime -----------------------------------------------------------


class FakeRuntime:
    """Records every call; ``outcome(msgs)`` returns the result or raises."""

    def __init__(self, outcome: Callable[[list[str]], Any] | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.constructed: list[tuple[str, tuple[str | None, ...]]] = []
        self.closed: list[int] = []
        self.outcome = outcome or (lambda users: f"batch of {len(users)}")

    async def construct(self, name: str, *args: str | None) -> int:
        self.constructed.append((name, args))
        return len(self.constructed)

    async def conn_send(self, conn: int, msg: Message) -> Any:
        users = [msg.recipient.local_part]
        self.calls.append(("send", users))
        return self.outcome(users)

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        users = [m.recipient.local_part for m in msgs]
        self.calls.append(("send_batch", users))
        return self.outcome(users)

    def conn_close(self, conn: int) -> None:
        self.closed.append(conn)


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
async def setup():
    clock = FakeClock()
    runtime = FakeRuntime()
    dispatch = LuaDispatch(runtime, clock=clock)
    yield clock, runtime, dispatch
    await dispatch.close()


def start(
    dispatch: LuaDispatch, config: QueueConfig, users: Iterable[str], domain: str = "hook.test"
) -> list[asyncio.Future[Attempt]]:
    return [asyncio.ensure_future(dispatch.deliver(make_msg(u, domain), config)) for u in users]


async def test_full_batches_at_once_then_the_rest_after_the_latency(setup):
    clock, runtime, dispatch = setup
    config = lua_config(batch_size=3, min_batch_size=3, max_batch_latency=1.0)
    tasks = start(dispatch, config, [f"u{i}" for i in range(7)])
    await turns()
    assert runtime.calls == [
        ("send_batch", ["u0", "u1", "u2"]),
        ("send_batch", ["u3", "u4", "u5"]),
    ]
    assert not tasks[6].done()
    clock.advance(0.5)
    dispatch.poke()
    await turns()
    assert len(runtime.calls) == 2  # the oldest waiting message is only 0.5 s old
    clock.advance(0.5)
    dispatch.poke()
    await turns()
    assert runtime.calls[2] == ("send_batch", ["u6"])  # a partial batch: still send_batch
    attempts = [t.result() for t in tasks]
    assert {a.disposition for a in attempts} == {RecordType.Delivery}
    assert [a.response.content for a in attempts] == ["batch of 3"] * 6 + ["batch of 1"]
    assert attempts[0].site == "unspecified->hook.test@lua:make.hook"
    assert attempts[0].delivery_protocol == "Lua"
    assert len({a.session_id for a in attempts}) == 1  # one connection
    assert runtime.constructed == [("make.hook", ("hook.test", None, None))]


async def test_min_batch_size_reached_by_later_arrivals(setup):
    clock, runtime, dispatch = setup
    config = lua_config(batch_size=4, min_batch_size=3, max_batch_latency=60.0)
    first = start(dispatch, config, ["a", "b"])
    await turns()
    assert runtime.calls == []
    clock.advance(30)
    more = start(dispatch, config, ["c"])
    await turns()
    assert runtime.calls == [("send_batch", ["a", "b", "c"])]
    assert all(t.done() for t in first + more)


async def test_latency_zero_sends_what_arrived_in_the_same_turn(setup):
    _clock, runtime, dispatch = setup
    config = lua_config(batch_size=3, min_batch_size=2, max_batch_latency=0.0)
    tasks = start(dispatch, config, ["a", "b", "c", "d", "e"])
    await turns()
    assert runtime.calls == [("send_batch", ["a", "b", "c"]), ("send_batch", ["d", "e"])]
    later = start(dispatch, config, ["f"])
    await turns()
    assert runtime.calls[2] == ("send_batch", ["f"])  # alone, without waiting for a second
    assert all(t.done() for t in tasks + later)


async def test_each_routing_domain_has_its_own_batch(setup):
    _clock, runtime, dispatch = setup
    config = lua_config(batch_size=3)
    tasks = start(dispatch, config, ["a", "b"], "one.test") + start(
        dispatch, config, ["c"], "two.test"
    )
    await turns()
    assert sorted(runtime.calls) == [("send_batch", ["a", "b"]), ("send_batch", ["c"])]
    assert {t.result().site for t in tasks} == {
        "unspecified->one.test@lua:make.hook",
        "unspecified->two.test@lua:make.hook",
    }


async def test_batch_size_one_calls_send(setup):
    _clock, runtime, dispatch = setup
    config = lua_config(batch_size=1)
    tasks = start(dispatch, config, ["a", "b"])
    await turns()
    assert runtime.calls == [("send", ["a"]), ("send", ["b"])]
    assert [t.result().response.content for t in tasks] == ["batch of 1", "batch of 1"]


def raising(exc: Exception) -> Callable[[list[str]], Any]:
    def outcome(users: list[str]) -> Any:
        raise exc

    return outcome


@pytest.mark.parametrize(
    ("exc", "kind", "code", "closed"),
    [
        (RejectError(450, "4.2.0 try later"), RecordType.TransientFailure, 450, False),
        (RejectError(421, "4.3.2 going away"), RecordType.TransientFailure, 421, True),
        (RejectError(550, "5.1.1 no such user"), RecordType.Bounce, 550, False),
        (PolicyError("init.lua:9: webhook exploded"), RecordType.TransientFailure, 400, True),
    ],
)
async def test_an_outcome_applies_to_every_message_of_the_batch(setup, exc, kind, code, closed):
    _clock, runtime, dispatch = setup
    runtime.outcome = raising(exc)
    tasks = start(dispatch, lua_config(batch_size=3), ["a", "b", "c"])
    await turns()
    assert runtime.calls == [("send_batch", ["a", "b", "c"])]
    attempts = [t.result() for t in tasks]
    assert {a.disposition for a in attempts} == {kind}
    assert {a.response.code for a in attempts} == {code}
    if code == 400:  # a Lua error (RejectError is a PolicyError too)
        assert attempts[0].response.content == (
            "KumoMTA internal: error in deliver_message: init.lua:9: webhook exploded"
        )
    else:
        enhanced = attempts[0].response.enhanced_code
        assert enhanced is not None
        assert enhanced[0] == code // 100
    assert runtime.closed == ([1] if closed else [])


async def test_an_unexpected_error_fails_the_attempts_and_the_sender_goes_on(setup):
    _clock, runtime, dispatch = setup
    runtime.outcome = raising(RuntimeError("bug"))
    config = lua_config(batch_size=2)
    tasks = start(dispatch, config, ["a", "b"])
    await turns()
    for t in tasks:
        with pytest.raises(RuntimeError, match="bug"):
            t.result()
    runtime.outcome = lambda users: "ok"
    (task,) = start(dispatch, config, ["c"])
    await turns()
    assert task.result().disposition is RecordType.Delivery


async def test_a_cancelled_attempt_is_not_sent(setup):
    clock, runtime, dispatch = setup
    config = lua_config(batch_size=3, min_batch_size=3, max_batch_latency=1.0)
    tasks = start(dispatch, config, ["a", "b"])
    await turns()
    tasks[0].cancel()
    await turns()
    clock.advance(1)
    dispatch.poke()
    await turns()
    assert runtime.calls == [("send_batch", ["b"])]


async def test_close_cancels_waiting_attempts_without_sending():
    clock = FakeClock()
    runtime = FakeRuntime()
    dispatch = LuaDispatch(runtime, clock=clock)
    config = lua_config(batch_size=3, min_batch_size=3, max_batch_latency=60.0)
    tasks = start(dispatch, config, ["a", "b"])
    once = start(dispatch, lua_config(batch_size=1), ["c"], "other.test")
    await turns()
    assert runtime.calls == [("send", ["c"])]
    await dispatch.close()
    await turns()
    assert all(t.cancelled() for t in tasks)  # no outcome: the messages stay spooled
    assert runtime.calls == [("send", ["c"])]
    assert sorted(runtime.closed) == [1]  # the connection of other.test (the only one made)
    assert once[0].result().disposition is RecordType.Delivery
    (late,) = start(dispatch, config, ["d"])
    await turns()
    assert late.cancelled()
    assert runtime.calls == [("send", ["c"])]


class SlowRuntime(FakeRuntime):
    """A send that waits (as a handler waiting in kumo.dns.lookup_mx does) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.closed_while_sending = False
        self.sending = 0

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        self.sending += 1
        try:
            await self.release.wait()
            return await super().conn_send_batch(conn, msgs)
        finally:
            self.sending -= 1

    async def conn_send(self, conn: int, msg: Message) -> Any:
        self.sending += 1
        try:
            await self.release.wait()
            return await super().conn_send(conn, msg)
        finally:
            self.sending -= 1

    def conn_close(self, conn: int) -> None:
        self.closed_while_sending |= self.sending > 0
        super().conn_close(conn)


@pytest.mark.parametrize("batch_size", [1, 3])
async def test_close_lets_a_waiting_send_finish_before_closing_its_connection(batch_size):
    runtime = SlowRuntime()
    dispatch = LuaDispatch(runtime, clock=FakeClock())
    tasks = start(dispatch, lua_config(batch_size=batch_size), ["a"])
    await turns()
    closing = asyncio.ensure_future(dispatch.close())
    await turns()
    assert not closing.done()  # waits for the send in progress
    runtime.release.set()
    await closing
    assert tasks[0].result().disposition is RecordType.Delivery
    assert runtime.closed == [1]
    assert not runtime.closed_while_sending


async def test_close_gives_up_on_a_send_that_never_ends():
    runtime = SlowRuntime()
    dispatch = LuaDispatch(runtime, clock=FakeClock())
    tasks = start(dispatch, lua_config(batch_size=3), ["a", "b"])
    await turns()
    await dispatch.close(drain_seconds=0.05)
    await turns()
    assert all(t.cancelled() for t in tasks)  # not attempted: no record, still spooled
    assert runtime.calls == []


# -- the runtime's conn_send_batch (real Lua) ----------------------------------------------------

POLICY = """
kumo.on('make.hook', function(domain, tenant, campaign)
  local conn = { calls = 0 }
  function conn:send_batch(msgs)
    self.calls = self.calls + 1
    local users = {}
    for i, msg in ipairs(msgs) do users[i] = msg:recipient().user end
    if users[1] == 'reject' then kumo.reject(451, '4.4.1 later') end
    if users[1] == 'boom' then error('exploded') end
    return domain .. ' #' .. self.calls .. ': ' .. table.concat(users, ',')
  end
  return conn
end)
kumo.on('make.single', function() return { send = function(self, msg) return 'one' end } end)
kumo.on('make.none', function() return { close = function() end } end)
"""


@pytest.fixture
def runtime(tmp_path):
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(POLICY))
    rt = PolicyRuntime(path)
    rt.fire_init()
    return rt


async def test_conn_send_batch_passes_an_array_of_messages(runtime):
    conn = await runtime.construct("make.hook", "hook.test", None, None)
    msgs = [make_msg("a"), make_msg("b"), make_msg("c")]
    assert await runtime.conn_send_batch(conn, msgs) == "hook.test #1: a,b,c"
    assert await runtime.conn_send_batch(conn, msgs[:1]) == "hook.test #2: a"
    assert runtime.messages == {}  # every handle unbound


async def test_conn_send_batch_errors(runtime):
    conn = await runtime.construct("make.hook", "hook.test", None, None)
    with pytest.raises(RejectError) as info:
        await runtime.conn_send_batch(conn, [make_msg("reject"), make_msg("b")])
    assert info.value.code == 451
    with pytest.raises(PolicyError, match="exploded"):
        await runtime.conn_send_batch(conn, [make_msg("boom")])
    assert runtime.messages == {}
    single = await runtime.construct("make.single", "hook.test", None, None)
    with pytest.raises(PolicyError, match="needs a send_batch method"):
        await runtime.conn_send_batch(single, [make_msg("a")])
    with pytest.raises(PolicyError, match="a send or send_batch method"):
        await runtime.construct("make.none", "hook.test", None, None)


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"batch_size": 0}, "batch_size: must be at least 1, got 0"),
        ({"min_batch_size": 0}, "min_batch_size: must be at least 1, got 0"),
        (
            {"batch_size": 3, "min_batch_size": 4},
            "min_batch_size: must be between 1 and batch_size (3), got 4",
        ),
        ({"min_batch_size": 2}, "min_batch_size: must be between 1 and batch_size (1), got 2"),
    ],
)
def test_bad_batch_keys(keys, error):
    with pytest.raises(ConfigError) as info:
        QueueConfig.from_mapping({"protocol": {"custom_lua": {"constructor": "c", **keys}}})
    assert error in str(info.value)


def test_good_batch_keys():
    config = QueueConfig.from_mapping(
        {
            "protocol": {
                "custom_lua": {
                    "constructor": "c",
                    "batch_size": 10,
                    "min_batch_size": 10,
                    "max_batch_latency": "2s",
                }
            }
        }
    )
    assert config.protocol == CustomLuaProtocol(
        constructor="c", batch_size=10, min_batch_size=10, max_batch_latency=2.0
    )


def test_bad_batch_keys_from_the_policy_name_the_key(tmp_path):
    path = tmp_path / "init.lua"
    path.write_text(
        textwrap.dedent(
            """
            kumo.on('get_queue_config', function()
              return kumo.make_queue_config {
                protocol = { custom_lua = { constructor = 'c', batch_size = 3,
                  min_batch_size = 5 } },
              }
            end)
            """
        )
    )
    rt = PolicyRuntime(path)
    rt.fire_init()
    with pytest.raises(PolicyError) as info:
        PolicyEvents(rt).get_queue_config("hook.test", None, None, None)
    assert str(info.value) == (
        "init.lua:3: make_queue_config: min_batch_size: must be between 1 and batch_size (3), got 5"
    )
