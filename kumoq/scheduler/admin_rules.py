"""The operator's standing orders: admin bounces, suspensions of scheduled queues and of ready
queues (reference §6.1, KumoMTA's ``/api/admin/{bounce,suspend,suspend-ready-q}/v1``).

A rule is made by the admin API with a ``duration`` and applies until it expires or is
cancelled, to the messages already queued (the caller sweeps them) and to every message that
arrives later:

- ``BounceRule``: a message of a matching scheduled queue is removed with an ``AdminBounce``
  record (551 5.7.1 ``Administrator bounced with reason: <reason>``) when it is inserted or
  promoted.
- ``SuspendRule``: a matching scheduled queue's messages are not promoted; each due one logs
  ``TransientFailure`` 451 4.4.4 ``KumoMTA internal: scheduled queue is suspended: <reason>``
  and waits for its next retry, as in KumoMTA.
- ``ReadyQueueSuspension``: the named ready queue opens no connection; its messages fail
  transiently with "no sources ... eligible" and wait for their next retry.

Criteria match the parsed parts of the scheduled queue's name; ``queue_names`` takes
precedence; no criteria match every queue. Domains compare without regard to case.

A rule's id is a new UUID, or the ``rule_id`` given: with ``kumoq serve --workers N`` the
worker that takes the request makes the id and every other worker makes the rule under it.

Pure (L0): time comes in as ``now`` (unix seconds). The lookups the hot path makes
(``bounce_for``, ``suspension_for``, ``ready_suspension_for``) cost one truth test while no
rule exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from kumoq.message import QueueNameParts

__all__ = [
    "ADMIN_BOUNCE_CODE",
    "ADMIN_BOUNCE_ENHANCED",
    "DEFAULT_RULE_DURATION",
    "AdminCriteria",
    "AdminRules",
    "BounceRule",
    "ReadyQueueSuspension",
    "SuspendRule",
    "criteria_from_mapping",
]

DEFAULT_RULE_DURATION: Final = 300.0  # KumoMTA's default ``duration``: 5 minutes
ADMIN_BOUNCE_CODE: Final = 551
ADMIN_BOUNCE_ENHANCED: Final = (5, 7, 1)


@dataclass(frozen=True, slots=True)
class AdminCriteria:
    """Which scheduled queues a rule applies to. All ``None`` and no ``queue_names``: every
    queue (KumoMTA's "everything")."""

    domain: str | None = None
    routing_domain: str | None = None
    campaign: str | None = None
    tenant: str | None = None
    queue_names: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.queue_names and all(
            v is None for v in (self.domain, self.routing_domain, self.campaign, self.tenant)
        )

    def matches(self, queue_name: str, parts: QueueNameParts) -> bool:
        if self.queue_names:
            return queue_name in self.queue_names
        if self.domain is not None and parts.domain.lower() != self.domain.lower():
            return False
        if self.routing_domain is not None and (
            (parts.routing_domain or "").lower() != self.routing_domain.lower()
        ):
            return False
        if self.campaign is not None and parts.campaign != self.campaign:
            return False
        return self.tenant is None or parts.tenant == self.tenant

    def to_json(self) -> dict[str, Any]:
        """The criteria as KumoMTA's list entries show them (absent ones as null)."""
        out: dict[str, Any] = {
            "domain": self.domain,
            "routing_domain": self.routing_domain,
            "campaign": self.campaign,
            "tenant": self.tenant,
        }
        if self.queue_names:
            out["queue_names"] = list(self.queue_names)
        return out


@dataclass(slots=True)
class BounceRule:
    id: str
    criteria: AdminCriteria
    reason: str
    expires: float
    suppress_logging: bool = False
    bounced: dict[str, int] = field(default_factory=dict)  # queue name -> messages bounced

    @property
    def response_text(self) -> str:
        return f"Administrator bounced with reason: {self.reason}"

    def count(self, queue_name: str, n: int = 1) -> None:
        self.bounced[queue_name] = self.bounced.get(queue_name, 0) + n

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            **self.criteria.to_json(),
            "duration": _remaining(self.expires, now),
            "bounced": dict(self.bounced),
            "total_bounced": sum(self.bounced.values()),
        }


@dataclass(slots=True)
class SuspendRule:
    id: str
    criteria: AdminCriteria
    reason: str
    expires: float

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            **self.criteria.to_json(),
            "duration": _remaining(self.expires, now),
        }


@dataclass(slots=True)
class ReadyQueueSuspension:
    id: str
    name: str
    reason: str
    expires: float

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "reason": self.reason,
            "duration": _remaining(self.expires, now),
            "expires": self.expires,
        }


def _remaining(expires: float, now: float) -> str:
    """KumoMTA shows the remaining duration as humantime text: ``4m 59s``."""
    seconds = max(0, round(expires - now))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


R = TypeVar("R", BounceRule, SuspendRule, ReadyQueueSuspension)


def _live(rules: dict[str, R], now: float) -> list[R]:
    """The rules not expired yet; drops the expired ones. O(rules)."""
    expired = [rule_id for rule_id, rule in rules.items() if rule.expires <= now]
    for rule_id in expired:
        del rules[rule_id]
    return list(rules.values())


class AdminRules:
    """Every active admin rule, by id."""

    def __init__(self) -> None:
        self._bounces: dict[str, BounceRule] = {}
        self._suspends: dict[str, SuspendRule] = {}
        self._ready: dict[str, ReadyQueueSuspension] = {}

    # -- making and cancelling ---------------------------------------------------------------

    def add_bounce(
        self,
        criteria: AdminCriteria,
        reason: str,
        *,
        now: float,
        duration: float = DEFAULT_RULE_DURATION,
        suppress_logging: bool = False,
        rule_id: str | None = None,
    ) -> BounceRule:
        rule = BounceRule(
            rule_id or str(uuid.uuid4()), criteria, reason, now + duration, suppress_logging
        )
        self._bounces[rule.id] = rule
        return rule

    def add_suspend(
        self,
        criteria: AdminCriteria,
        reason: str,
        *,
        now: float,
        duration: float = DEFAULT_RULE_DURATION,
        rule_id: str | None = None,
    ) -> SuspendRule:
        rule = SuspendRule(rule_id or str(uuid.uuid4()), criteria, reason, now + duration)
        self._suspends[rule.id] = rule
        return rule

    def add_ready_suspension(
        self,
        name: str,
        reason: str,
        *,
        now: float,
        duration: float = DEFAULT_RULE_DURATION,
        rule_id: str | None = None,
    ) -> ReadyQueueSuspension:
        rule = ReadyQueueSuspension(rule_id or str(uuid.uuid4()), name, reason, now + duration)
        self._ready[rule.id] = rule
        return rule

    def cancel_bounce(self, rule_id: str) -> bool:
        return self._bounces.pop(rule_id, None) is not None

    def cancel_suspend(self, rule_id: str) -> bool:
        return self._suspends.pop(rule_id, None) is not None

    def cancel_ready_suspension(self, rule_id: str) -> bool:
        return self._ready.pop(rule_id, None) is not None

    # -- listing -----------------------------------------------------------------------------

    def bounces(self, now: float) -> list[BounceRule]:
        return _live(self._bounces, now)

    def suspends(self, now: float) -> list[SuspendRule]:
        return _live(self._suspends, now)

    def ready_suspensions(self, now: float) -> list[ReadyQueueSuspension]:
        return _live(self._ready, now)

    # -- the lookups on the message path -----------------------------------------------------

    def bounce_for(self, queue_name: str, parts: QueueNameParts, now: float) -> BounceRule | None:
        if not self._bounces:
            return None
        return next((r for r in self.bounces(now) if r.criteria.matches(queue_name, parts)), None)

    def suspension_for(
        self, queue_name: str, parts: QueueNameParts, now: float
    ) -> SuspendRule | None:
        if not self._suspends:
            return None
        return next((r for r in self.suspends(now) if r.criteria.matches(queue_name, parts)), None)

    def ready_suspension_for(self, name: str, now: float) -> ReadyQueueSuspension | None:
        if not self._ready:
            return None
        live = [rule for rule in self.ready_suspensions(now) if rule.name == name]
        return max(live, key=lambda rule: rule.expires) if live else None

    @property
    def any_ready_suspension(self) -> bool:
        return bool(self._ready)


def criteria_from_mapping(fields: Mapping[str, Any]) -> AdminCriteria:
    """``AdminCriteria`` from the keys a request carries (already checked for type)."""
    names = fields.get("queue_names") or ()
    return AdminCriteria(
        domain=fields.get("domain"),
        routing_domain=fields.get("routing_domain"),
        campaign=fields.get("campaign"),
        tenant=fields.get("tenant"),
        queue_names=tuple(names),
    )
