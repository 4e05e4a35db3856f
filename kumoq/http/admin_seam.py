"""What the admin API needs of the running daemon: ``AdminSeam``, owned here and implemented by
``kumoq.admin.AdminService`` (the daemon wires them). Every method returns JSON-able values in
the shapes the endpoints answer with; ``None`` means "no such message or queue" (404).

``AdminRequestError(status, message, field)`` is what a method raises for a request it cannot
carry out (the route answers it as JSON); it lives in kumoq.errors so that both sides use it.

Bottom of kumoq.http beside ``errors``: imports only kumoq.scheduler.admin_rules and typing.
"""

from __future__ import annotations

from typing import Any, Protocol

from kumoq.scheduler.admin_rules import AdminCriteria

__all__ = ["AdminSeam"]

Json = dict[str, Any]


class AdminSeam(Protocol):
    # -- KumoMTA's endpoints -------------------------------------------------------------------

    async def bounce(
        self,
        criteria: AdminCriteria,
        reason: str,
        duration: float,
        suppress_logging: bool,
        rule_id: str | None = None,
    ) -> Json:
        """``{id, bounced, total_bounced}``: the rule's id and what the immediate sweep bounced.
        ``rule_id``: the id to make the rule under (a sibling worker's; else a new one)."""
        ...

    def bounce_list(self) -> list[Json]: ...

    def bounce_cancel(self, rule_id: str) -> bool: ...

    def suspend(
        self, criteria: AdminCriteria, reason: str, duration: float, rule_id: str | None = None
    ) -> Json:
        """``{id}``."""
        ...

    def suspend_list(self) -> list[Json]: ...

    def suspend_cancel(self, rule_id: str) -> bool:
        """Also makes the queue's waiting messages due now (delivery resumes at once)."""
        ...

    def suspend_ready_q(
        self, name: str, reason: str, duration: float, rule_id: str | None = None
    ) -> Json:
        """``{id}``."""
        ...

    def suspend_ready_q_list(self) -> list[Json]: ...

    def suspend_ready_q_cancel(self, rule_id: str) -> bool: ...

    async def rebind(
        self,
        criteria: AdminCriteria,
        reason: str,
        data: dict[str, str],
        always_flush: bool,
        suppress_logging: bool,
        trigger_rebind_event: bool,
    ) -> Json:
        """``{rebound}``: how many messages moved (KumoMTA answers ``{}``)."""
        ...

    async def inspect_sched_q(
        self, queue_name: str, want_body: bool, limit: int | None
    ) -> Json | None:
        """KumoMTA's InspectQueueV1Response; None: no such scheduled queue."""
        ...

    async def inspect_message(self, msg_id: str, want_body: bool) -> Json | None:
        """``{id, message: {sender, recipient, meta, data?, due, num_attempts, scheduling}}``
        plus ours: ``queue``, ``state`` and ``waiting`` ({reason, until, detail}): why it
        waits now. None: no such message."""
        ...

    def ready_q_states(self, queues: list[str]) -> Json:
        """``{states_by_ready_queue: {name: {...}}}``."""
        ...

    # -- ours ----------------------------------------------------------------------------------

    def queue_messages(self, queue_name: str, cursor: str | None, limit: int) -> Json | None:
        """``{queue_name, num_scheduled, messages: [{id, sender, recipient, due, num_attempts,
        priority, last_response}], next_cursor}``; None: no such queue. Raises
        AdminRequestError for a cursor that does not parse."""
        ...

    async def retry(
        self, msg_id: str | None, queue_name: str | None, criteria: AdminCriteria | None
    ) -> Json:
        """Make waiting messages due now: one by id, a queue, or every queue the criteria
        match. ``{retried}``."""
        ...

    async def delete_message(self, msg_id: str, reason: str) -> bool:
        """Remove one waiting message with an AdminBounce record; False: no such message."""
        ...

    def campaign_progress(self, campaign: str | None, tenant: str | None) -> list[Json]:
        """``[{campaign, tenant, received, delivered, transient_failures, bounced, expired,
        pending}]``."""
        ...

    def dead_letter_list(self, queue_name: str | None, cursor: str | None, limit: int) -> Json:
        """``{messages: [{id, queue, sender, recipient, record_type, response, since,
        until, num_attempts}], total, next_cursor}``."""
        ...

    async def dead_letter_show(self, msg_id: str, want_body: bool) -> Json | None: ...

    async def dead_letter_requeue(self, ids: list[str] | None, queue_name: str | None) -> Json:
        """``{requeued}``; ``ids`` and ``queue_name`` both None: every dead letter."""
        ...

    async def dead_letter_purge(self, ids: list[str] | None, queue_name: str | None) -> Json:
        """``{purged}``."""
        ...
