"""Why a message is being (re)inserted into a queue: KumoMTA's ``InsertReason`` (§1.5).

The reasons appear in ``Delayed`` records (``Context: MessageRateThrottle. Next due in ...``)
and decide whether a ``Delayed`` record is logged at all. Pure: imports nothing from kumoq.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InsertContext", "InsertReason"]


class InsertReason(StrEnum):
    """KumoMTA's names, so log consumers written for it keep working."""

    Received = "Received"
    Enumerated = "Enumerated"
    ScheduledForLater = "ScheduledForLater"
    MessageRateThrottle = "MessageRateThrottle"
    ReadyQueueWasFull = "ReadyQueueWasFull"
    ConnectionRateThrottle = "ConnectionRateThrottle"
    FailedToInsertIntoReadyQueue = "FailedToInsertIntoReadyQueue"
    MessageGetQueueNameFailed = "MessageGetQueueNameFailed"
    DueTimeWasReached = "DueTimeWasReached"
    LoggedTransientFailure = "LoggedTransientFailure"
    ReadyQueueWasSuspended = "ReadyQueueWasSuspended"
    AdminRebind = "AdminRebind"


class InsertContext(tuple[InsertReason, ...]):
    """An ordered set of reasons, as KumoMTA's ``InsertContext`` is."""

    __slots__ = ()

    def __new__(cls, *reasons: InsertReason) -> InsertContext:
        # One reason, the usual case, has no repeat to drop.
        return super().__new__(cls, reasons if len(reasons) < 2 else dict.fromkeys(reasons))

    def add(self, reason: InsertReason) -> InsertContext:
        return InsertContext(*self, reason)

    def logs_delayed(self) -> bool:
        """A ``Delayed`` record is logged unless the context is only ``Enumerated`` or it
        already carries ``LoggedTransientFailure`` (the failure record says it all)."""
        if InsertReason.LoggedTransientFailure in self:
            return False
        return tuple(self) != (InsertReason.Enumerated,)

    def describe(self) -> str:
        return ", ".join(self)
