"""Whether the daemon accepts mail now, as ``/api/check-liveness/v1`` and injection see it.

``Readiness`` is the seam, owned here: what reception knows (``kumoq.reception.Reception``
implements it): whether the spool has been enumerated, and whether storage is below a
free-space floor. ``Availability`` adds the one thing reception does not know, that the daemon
is shutting down, and gives the reason new mail is refused, in KumoMTA's words:
``shutting down``, ``waiting for spool startup``, or ``storage is too full: ...`` naming
the free-space floor crossed (kumoq.spool.health).

Imports kumoq.http.errors only; must not import the other kumoq.http modules.
"""

from __future__ import annotations

from typing import Protocol

from kumoq.http.errors import ApiError

__all__ = ["Availability", "Readiness"]


class Readiness(Protocol):
    """What reception knows about accepting mail; both reads are O(1) and do no IO."""

    def ready(self) -> bool:
        """The spool has been enumerated."""
        ...

    @property
    def storage_problem(self) -> str | None:
        """Why storage refuses new mail (a free-space floor crossed), or None."""
        ...


class Availability:
    """The daemon's readiness plus its shutdown state; one per HTTP listener."""

    __slots__ = ("_readiness", "stopping")

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness
        self.stopping = False

    def reason(self) -> str | None:
        """Why new mail is refused now, or None when it is accepted."""
        if self.stopping:
            return "shutting down"
        if not self._readiness.ready():
            return "waiting for spool startup"
        return self._readiness.storage_problem

    def check(self) -> None:
        """Raise ApiError 503 with the reason when new mail is refused."""
        reason = self.reason()
        if reason is not None:
            raise ApiError(503, reason)
