"""GCRA throttles (reference §3.4): the result type, the backend seam and the in-process backend.

A ``ThrottleSpec`` (§3.5, parsed by kumoq.config.values) says ``limit`` per ``period`` seconds
with an optional ``max_burst``. For a key, with ``T = period / limit`` and
``burst = max_burst or limit``, the stored state is the theoretical arrival time ``tat``; a check
of quantity ``q`` at ``now``::

    tat = max(stored or now, now);  new_tat = tat + T*q;  allow_at = new_tat - T*burst
    diff = now - allow_at
    diff < 0  -> throttled, retry_after = ceil(-diff) whole seconds, nothing stored
                 (``wait`` = -diff exactly, rounded up to the nanosecond)
    otherwise -> allowed, store new_tat, remaining = floor(diff / T)

so a fresh key admits ``burst`` at once and then one every ``T``. The stored key is
``f"{key}:{limit}:{burst}:{period}"`` (``throttle_key``), so a changed spec starts afresh.

The local backend computes this in exact integer arithmetic (time in units of
``1 / limit`` nanoseconds, so ``T`` is the integer ``period * 10**9``): float error cannot admit
one too many, or refuse the ``burst``-th request. Being throttled is a return value, never an
exception.

The shared backend (§9, kumoq.redis_throttles) uses the same key and runs KumoMTA's GCRA script
(``GET key``; redis ``TIME``, whole seconds; the formula above; ``SET key new_tat EX
ceil(new_tat - now)``), or ``CL.THROTTLE key max_burst limit period q`` when the server has
redis-cell. KumoMTA's own *local* backend also uses the
redis-cell algorithm with ``max_burst = min(burst, limit - 1)`` and tolerance
``T * (max_burst + 1)``: the same as above for the default burst, one more admission when
``max_burst`` is set below ``limit``. kumoq implements the formula above exactly, everywhere.

The async seam (``Throttle.throttle``, ``Limits.acquire``): every caller that can wait (the
egress dispatchers, source selection, ``kumo.make_throttle``) awaits these, so a shared backend
(``SharedThrottleBackend``, ``SharedLimitBackend``: a round trip to redis, kumoq.redis_throttles)
plugs in without touching them. A shared backend that cannot answer (redis down) returns None:
the check is then made in the local backend, and the lease taken locally (and given back
locally), so mail proceeds or waits as on a single node. The scheduled queue's
``max_message_rate`` gate (a synchronous promotion) and ``throttle:throttle()`` of
``kumo.make_throttle`` call the synchronous ``Throttle.check``: the local state, always.

Connection limits (§1.8): ``Limits.acquire(keys, duration)`` takes one lease per
``(key, LimitSpec)``, smallest limit first; the first key at its limit releases what was taken
and answers ``Refused`` (the key, and for a shared key the seconds until its soonest lease
expires). Locally a lease is a count per key, released when its connection ends; ``on_release``
lets a ready queue that was refused be told when a slot of that key frees. A shared lease
expires ``duration`` seconds after it was taken or last extended (``Leases.extend``, before
each message of a connection); a refusal by a shared key is not told by a local release: the
caller tries again later.

L0 (pure): imports only kumoq.config.values and the standard library; no asyncio, IO or lupa;
time comes in as ``now`` (unix seconds; non-decreasing per backend for exact results).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, final

from kumoq.config.values import LimitSpec, ThrottleSpec

__all__ = [
    "Leases",
    "Limits",
    "LocalLimitBackend",
    "LocalThrottleBackend",
    "Refused",
    "SharedLimitBackend",
    "SharedThrottleBackend",
    "Throttle",
    "ThrottleBackend",
    "ThrottleResult",
    "by_rate",
    "gcra",
    "throttle_key",
]

_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ThrottleResult:
    """The outcome of one check.

    - ``throttled``: the operation must wait; nothing was consumed.
    - ``limit``: the burst, i.e. how many a fresh key admits at once (X-RateLimit-Limit).
      KumoMTA's redis script reports ``burst + 1`` here; redis-cell reports its capacity.
    - ``remaining``: how many more could be admitted right now (X-RateLimit-Remaining).
    - ``reset_after``: whole seconds until the key is back to full capacity.
    - ``retry_after``: whole seconds (at least 1) to wait before the same check can pass, or
      None when it was allowed.
    - ``wait``: the exact seconds (rounded up to the nanosecond) before the same check can pass,
      or None when it was allowed or the backend only knows whole seconds. A kumoq extension,
      left out of comparisons: results compare by KumoMTA's fields. The scheduler paces a
      queue's ``max_message_rate`` with it (kumoq.scheduler.scheduled).
    """

    throttled: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None
    wait: float | None = field(default=None, compare=False)


def throttle_key(key: str, spec: ThrottleSpec) -> str:
    """The stored key for ``key`` under ``spec``: ``"{key}:{limit}:{burst}:{period}"``."""
    burst = spec.limit if spec.max_burst is None else spec.max_burst
    return f"{key}:{spec.limit}:{burst}:{spec.period}"


class ThrottleBackend(Protocol):
    """Where throttle state lives: in process, or shared through redis (§9)."""

    def check(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult: ...


class SharedThrottleBackend(Protocol):
    """A backend shared between processes (redis, §9): every check is a round trip; None when
    the shared store could not answer (the check is then made locally)."""

    async def check_async(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult | None: ...


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gcra(
    stored: int | None, spec: ThrottleSpec, now: float, quantity: int = 1
) -> tuple[ThrottleResult, int | None]:
    """One GCRA check (the module docstring's formula) of a key whose stored ``tat`` is
    ``stored`` (None: absent), in units of ``1 / spec.limit`` nanoseconds: the result, and the
    ``tat`` to store (None: store nothing). Pure; every backend that keeps ``tat`` itself
    (in process, or in a file the workers of one box share) computes with this.

    ``quantity == 0`` only asks: it is throttled (with no retry_after) when nothing remains,
    as KumoMTA's script does. A negative quantity is a ValueError."""
    if quantity < 0:
        raise ValueError(f"quantity must not be negative, got {quantity!r}")
    limit = spec.limit
    burst = limit if spec.max_burst is None else spec.max_burst
    whole = math.floor(now)
    now_u = (whole * _NS + round((now - whole) * _NS)) * limit
    interval = spec.period * _NS  # T, in units of 1/limit ns
    per_second = limit * _NS
    tat = now_u if stored is None or stored < now_u else stored
    new_tat = tat + interval * quantity
    diff = now_u - (new_tat - interval * burst)
    if diff < 0:
        remaining = max(0, (now_u - tat + interval * burst) // interval)
        throttled = ThrottleResult(
            True,
            burst,
            remaining,
            float(_ceil_div(tat - now_u, per_second)),
            float(_ceil_div(-diff, per_second)),
            _ceil_div(-diff, limit) / _NS,
        )
        return throttled, None
    remaining = diff // interval
    if quantity == 0 and remaining == 0:
        reset = float(_ceil_div(tat - now_u, per_second))
        return ThrottleResult(True, burst, 0, reset, None), None
    reset = float(_ceil_div(new_tat - now_u, per_second))
    return ThrottleResult(False, burst, remaining, reset, None), new_tat


@final
class LocalThrottleBackend:
    """GCRA state in a dict of ``throttle_key -> (tat, limit)``, ``tat`` in 1/limit ns units.

    A key whose ``tat`` is in the past behaves exactly like an absent key, so such keys are
    dropped: when an insert finds the dict at ``sweep threshold`` entries, one pass removes every
    stale key and the threshold becomes twice the survivors (at least ``min_sweep``). Memory is
    thus bounded by about twice the number of live keys, at amortised O(1) per check.
    """

    __slots__ = ("_min_sweep", "_sweep_at", "_tat")

    def __init__(self, *, min_sweep: int = 1024) -> None:
        if min_sweep < 1:
            raise ValueError(f"min_sweep must be at least 1, got {min_sweep!r}")
        self._tat: dict[str, tuple[int, int]] = {}
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep

    def __len__(self) -> int:
        return len(self._tat)

    def check(self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1) -> ThrottleResult:
        """Check and, when allowed, consume ``quantity`` for ``key``. Amortised O(1).

        ``quantity == 0`` only asks: it is throttled (with no retry_after) when nothing
        remains, as KumoMTA's script does. A negative quantity is a ValueError.
        """
        stored_key = throttle_key(key, spec)
        stored = self._tat.get(stored_key)
        result, new_tat = gcra(None if stored is None else stored[0], spec, now, quantity)
        if new_tat is not None:
            if stored is None and len(self._tat) >= self._sweep_at:
                whole = math.floor(now)
                self._sweep(whole * _NS + round((now - whole) * _NS))
            self._tat[stored_key] = (new_tat, spec.limit)
        return result

    def _sweep(self, now_ns: int) -> None:
        """Drop every key whose ``tat`` is before ``now_ns``. O(n)."""
        self._tat = {k: v for k, v in self._tat.items() if v[0] >= now_ns * v[1]}
        self._sweep_at = max(self._min_sweep, 2 * len(self._tat))

    def _check(self) -> None:
        """Assert the invariants (for tests). O(n)."""
        assert self._min_sweep >= 1
        assert self._sweep_at >= self._min_sweep
        assert len(self._tat) <= self._sweep_at
        for key, (tat, limit) in self._tat.items():
            assert isinstance(tat, int)
            assert isinstance(limit, int)
            assert limit >= 1
            _, stored_limit, burst, period = key.rsplit(":", 3)
            assert int(stored_limit) == limit, key
            assert int(burst) >= 0, key
            assert int(period) >= 1, key


@final
class Throttle:
    """Checks a spec against the configured backend, or the local one for ``local:`` specs.

    ``Throttle()`` keeps everything in process; ``Throttle(redis_backend)`` shares every spec
    except those with ``force_local``; so does ``Throttle(shared=...)`` for ``throttle()``.
    """

    __slots__ = ("_backend", "_local", "_shared")

    def __init__(
        self,
        backend: ThrottleBackend | None = None,
        *,
        local: LocalThrottleBackend | None = None,
        shared: SharedThrottleBackend | None = None,
    ) -> None:
        if local is None:
            local = backend if isinstance(backend, LocalThrottleBackend) else LocalThrottleBackend()
        self._local: LocalThrottleBackend = local
        self._backend: ThrottleBackend = local if backend is None else backend
        self._shared = shared

    @property
    def local(self) -> LocalThrottleBackend:
        return self._local

    def shares(self, spec: ThrottleSpec) -> bool:
        """Whether ``throttle`` checks ``spec`` in the shared backend (one is configured and
        ``spec`` is not ``local:``)."""
        return self._shared is not None and not spec.force_local

    def check(self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1) -> ThrottleResult:
        """``backend.check(...)``, or ``local.check(...)`` when ``spec.force_local``. O(1)."""
        backend = self._local if spec.force_local else self._backend
        return backend.check(key, spec, now, quantity)

    async def throttle(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult:
        """The check for callers that can wait: the shared backend when there is one (and
        ``spec`` is not ``local:``), else ``check``."""
        shared = self._shared
        if shared is not None and not spec.force_local:
            result = await shared.check_async(key, spec, now, quantity)
            return self._local.check(key, spec, now, quantity) if result is None else result
        return self.check(key, spec, now, quantity)


def by_rate(pairs: Iterable[tuple[str, ThrottleSpec]]) -> list[tuple[str, ThrottleSpec]]:
    """``(key, spec)`` pairs, smallest rate first (KumoMTA: ``limit / period`` in millionths),
    so a slot of a larger throttle is not taken only to trip over a smaller one."""
    return sorted(pairs, key=lambda p: int(p[1].limit / p[1].period * 1_000_000))


@dataclass(frozen=True, slots=True)
class Refused:
    """A lease was refused: ``key`` is at its limit. ``retry_after``: for a shared key, the
    seconds until its soonest lease expires (KumoMTA's ``TooManyLeases``); None for a local
    refusal, which ``LocalLimitBackend.on_release`` tells the end of."""

    key: str
    retry_after: float | None = None


class SharedLimitBackend(Protocol):
    """Connection-limit leases shared between processes (redis sorted sets, §9). Each method
    answers None when the shared store could not answer (the lease is then taken locally)."""

    async def acquire_async(
        self, key: str, spec: LimitSpec, duration: float
    ) -> object | Refused | None:
        """A lease of ``key`` that expires after ``duration`` s unless extended, or Refused."""
        ...

    async def extend_async(self, key: str, lease: object, duration: float) -> bool | None:
        """Push the lease's expiry to ``duration`` s from now; False when it is gone."""
        ...

    async def release_async(self, key: str, lease: object) -> None: ...


@final
class LocalLimitBackend:
    """In-process leases: a count per key, and callbacks to run when a key frees a slot."""

    __slots__ = ("_held", "_waiting")

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._waiting: dict[str, dict[int, Callable[[], None]]] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def try_acquire(self, key: str, spec: LimitSpec) -> bool:
        """Take a slot of ``key`` if fewer than ``spec.limit`` are held. O(1)."""
        count = self._held.get(key, 0)
        if count >= spec.limit:
            return False
        self._held[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Give a slot of ``key`` back and run (once) every callback waiting for it."""
        count = self._held.get(key, 0) - 1
        if count > 0:
            self._held[key] = count
        else:
            self._held.pop(key, None)
        self.wake(key)

    def wake(self, key: str) -> None:
        """Run (once) every callback waiting for a slot of ``key``: one was given back here,
        locally or in the shared backend."""
        waiting = self._waiting.pop(key, None)
        for callback in (waiting or {}).values():
            callback()

    def on_release(self, key: str, token: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, at the next release of ``key`` (one per ``token``)."""
        self._waiting.setdefault(key, {})[token] = callback


_LOCAL_LEASE: Final = object()  # a lease counted in the LocalLimitBackend


@final
class Leases:
    """The leases one connection holds; ``release()`` gives them back (idempotent)."""

    __slots__ = ("_limits", "_taken")

    def __init__(self, limits: Limits, taken: list[tuple[str, LimitSpec, object]]) -> None:
        self._limits = limits
        self._taken = taken

    @property
    def keys(self) -> list[str]:
        return [key for key, _, _ in self._taken]

    async def extend(self, duration: float) -> bool:
        """Extend every shared lease to ``duration`` s from now (KumoMTA: before each message
        of a connection). False when a shared lease is gone (it expired, or redis lost it): the
        connection should end. A local lease, or a shared store that cannot answer, is True."""
        for key, _, lease in self._taken:
            if lease is not _LOCAL_LEASE and not await self._limits.extend(key, lease, duration):
                return False
        return True

    async def release(self) -> None:
        taken, self._taken = self._taken, []
        for key, _, lease in reversed(taken):
            await self._limits.give_back(key, lease)


@final
class Limits:
    """Connection-limit leases in the local backend, or the shared one (not ``local:``)."""

    __slots__ = ("_local", "_shared")

    def __init__(self, shared: SharedLimitBackend | None = None) -> None:
        self._local = LocalLimitBackend()
        self._shared = shared

    @property
    def local(self) -> LocalLimitBackend:
        return self._local

    def is_shared(self, spec: LimitSpec) -> bool:
        """Whether leases of ``spec`` are taken in the shared backend (when it answers)."""
        return self._shared is not None and not spec.force_local

    async def acquire(
        self, limits: Iterable[tuple[str, LimitSpec]], duration: float = 1690.0
    ) -> Leases | Refused:
        """A lease of every ``(key, spec)``, smallest limit first, each expiring (if shared)
        ``duration`` s after it is taken or extended; or, when one is at its limit, Refused
        (and nothing is held)."""
        taken: list[tuple[str, LimitSpec, object]] = []
        for key, spec in sorted(limits, key=lambda p: p[1].limit):
            shared = self._shared
            lease: object | Refused | None = None
            if shared is not None and not spec.force_local:
                lease = await shared.acquire_async(key, spec, duration)
            if lease is None:  # local, or the shared store did not answer
                lease = _LOCAL_LEASE if self._local.try_acquire(key, spec) else Refused(key)
            if isinstance(lease, Refused):
                await Leases(self, taken).release()
                return lease
            taken.append((key, spec, lease))
        return Leases(self, taken)

    async def extend(self, key: str, lease: object, duration: float) -> bool:
        shared = self._shared
        if lease is _LOCAL_LEASE or shared is None:
            return True
        return await shared.extend_async(key, lease, duration) is not False

    async def give_back(self, key: str, lease: object) -> None:
        shared = self._shared
        if lease is _LOCAL_LEASE or shared is None:
            self._local.release(key)
        else:
            await shared.release_async(key, lease)
            self._local.wake(key)  # a ready queue of this process waits no longer
