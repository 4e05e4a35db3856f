"""Throttles and connection limits that hold across the workers of one box, without redis.

``kumoq serve --workers N`` runs N processes of one policy (kumoq.workers). A ``'20/s'`` path
rate or a ``connection_limit`` of 4 must hold for the box, not for each worker. With
``kumo.configure_redis_throttles`` redis keeps that state (kumoq.redis_throttles). Without it,
the workers share it through files in the run's registry directory (``<registry>/shared``, a
private directory of the supervisor that lives as long as the run):

- **Throttles.** Every check, the synchronous ones too (a scheduled queue's
  ``max_message_rate``, which stays per node with redis). One file per stored GCRA key
  (``throttle_key``), named by its digest and holding the key's ``tat`` (kumoq.throttle's
  units) as text. A check takes the file's ``flock``, reads the ``tat``, computes with
  ``kumoq.throttle.gcra`` and writes the new one back before unlocking: exact, as one
  process's dict is, whichever worker asks. Each worker keeps its files open (at most
  ``MAX_OPEN`` keys, then they are closed and reopened).
- **Connection limits.** A key with limit ``L`` has ``L`` slot files; a lease is an
  ``flock`` held on one of them (the first free, tried in order), and a release closes it.
  The kernel drops the locks of a worker that dies, so a crash never leaks a slot, and no
  lease needs an expiry or renewal. A refusal answers ``Refused(retry_after=RETRY)``: the
  ready queue tries again that soon (a release in another worker cannot be told here;
  one in the same worker is, at once).

A file operation that fails (the registry removed, no file descriptors left) answers None,
which kumoq.throttle turns into the worker's own state, with one warning per outage.

The blocking calls are short file syscalls made on the event loop: a throttle check costs
an ``flock`` pair, a ``pread`` and a ``pwrite`` (microseconds); a lease tries at most ``L``
slots. ``open_worker_throttles`` picks redis, these files, or the process's own state.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Final, final

from kumoq.config.redis import RedisThrottleConfig
from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.redis_throttles import SharedThrottles, open_shared_throttles
from kumoq.throttle import (
    Limits,
    LocalThrottleBackend,
    Refused,
    Throttle,
    ThrottleResult,
    gcra,
    throttle_key,
)
from kumoq.workers import WorkerSlot

__all__ = ["MAX_OPEN", "RETRY", "WorkerSharedState", "open_worker_throttles"]

log = logging.getLogger("kumoq.throttle")

MAX_OPEN: Final = 1024  # throttle files kept open per worker
RETRY: Final = 1.0  # seconds before a ready queue refused by a full limit tries again
_TAT_BYTES: Final = 64  # a tat is at most ~40 digits; the file holds it left-justified
_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@final
class _Lease:
    """One held slot of a limit: the open file whose flock is the lease."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


@final
class WorkerSharedState:
    """``SharedThrottleBackend`` and ``SharedLimitBackend`` on files in ``directory``."""

    def __init__(self, directory: Path, local: LocalThrottleBackend | None = None) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self._local = local or LocalThrottleBackend()  # while the files fail
        self._open: dict[str, int] = {}  # stored throttle key -> fd
        self._failing = False

    # -- throttles ----------------------------------------------------------------------

    def check(self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1) -> ThrottleResult:
        """The synchronous check (``ThrottleBackend``: the scheduled queue's
        ``max_message_rate``, Lua events kumoq calls synchronously); the worker's own state
        while the files fail."""
        result = self._shared_check(key, spec, now, quantity)
        return self._local.check(key, spec, now, quantity) if result is None else result

    async def check_async(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int = 1
    ) -> ThrottleResult | None:
        return self._shared_check(key, spec, now, quantity)

    def _shared_check(
        self, key: str, spec: ThrottleSpec, now: float, quantity: int
    ) -> ThrottleResult | None:
        try:
            result = self._check(throttle_key(key, spec), spec, now, quantity)
        except OSError as exc:
            self._failed(exc)
            return None
        self._failing = False
        return result

    def _check(
        self, stored_key: str, spec: ThrottleSpec, now: float, quantity: int
    ) -> ThrottleResult:
        fd = self._open.get(stored_key)
        if fd is None:
            if len(self._open) >= MAX_OPEN:
                self._close_throttles()
            fd = os.open(self.directory / f"t-{_digest(stored_key)}", _FLAGS, 0o600)
            self._open[stored_key] = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, _TAT_BYTES, 0).strip()
            result, new_tat = gcra(int(raw) if raw else None, spec, now, quantity)
            if new_tat is not None:
                os.pwrite(fd, str(new_tat).ljust(_TAT_BYTES).encode(), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return result

    # -- connection limits --------------------------------------------------------------

    async def acquire_async(
        self, key: str, spec: LimitSpec, duration: float
    ) -> object | Refused | None:
        """The first free slot of ``key``'s ``spec.limit``, or Refused. ``duration`` is not
        needed: a lease lasts while its worker holds it, and ends with the worker."""
        base = self.directory / f"l-{_digest(key)}"
        try:
            for slot in range(spec.limit):
                fd = os.open(f"{base}.{slot}", _FLAGS, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                self._failing = False
                return _Lease(fd)
        except OSError as exc:
            self._failed(exc)
            return None
        return Refused(key, RETRY)

    async def extend_async(self, key: str, lease: object, duration: float) -> bool | None:
        return True  # held until released or the worker ends

    async def release_async(self, key: str, lease: object) -> None:
        if isinstance(lease, _Lease) and lease.fd >= 0:
            fd, lease.fd = lease.fd, -1
            os.close(fd)  # the flock goes with it

    # -- ---------------------------------------------------------------------------------

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            log.warning(
                "throttles shared by the workers (%s) failed: %s; each worker uses its own "
                "state until they work again", self.directory, exc,
            )  # fmt: skip
        self._failing = True

    def _close_throttles(self) -> None:
        opened, self._open = self._open, {}
        for fd in opened.values():
            os.close(fd)

    async def close(self) -> None:
        self._close_throttles()


async def open_worker_throttles(
    config: RedisThrottleConfig | None, throttle: Throttle, slot: WorkerSlot | None
) -> SharedThrottles:
    """The throttle state and limits of this process: through redis when ``config`` is
    given; else, for a worker of several with a registry, through the registry's files; else
    the process's own."""
    if config is not None or slot is None or slot.count < 2 or slot.registry is None:
        return await open_shared_throttles(config, throttle)
    state = WorkerSharedState(slot.registry / "shared", throttle.local)
    # as backend too: the synchronous checks (a scheduled queue's max_message_rate) are shared
    shared = Throttle(state, local=throttle.local, shared=state)
    return SharedThrottles(shared, Limits(shared=state), state)
