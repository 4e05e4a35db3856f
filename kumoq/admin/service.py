"""``AdminService``: the admin API's view of the running daemon (kumoq.http.admin_seam).

It turns an operator's request into work on the queue manager, the SMTP egress and the spool:
rules go into ``AdminRules`` (which the manager and egress consult for every message), and an
immediate sweep applies them to what already waits. Answers are JSON-able, in KumoMTA's
shapes where KumoMTA has the endpoint.

"Why is this message waiting?": ``inspect_message`` answers from the message's ``state``
(set by the scheduler as it moves), the rules that match its queue, and egress's view of
the ready queue it waits in.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from kumoq.admin.progress import CampaignProgress
from kumoq.clock import Clock
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.errors import AdminRequestError, KumoqError, PolicyError
from kumoq.logs.records import RecordType, Response, rfc3339
from kumoq.message import Message, priority_of
from kumoq.scheduler.admin_rules import AdminCriteria
from kumoq.scheduler.attempt import RecordSink
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.retry import format_duration
from kumoq.scheduler.scheduled import ScheduledQueue
from kumoq.spool.base import Spool

__all__ = ["AdminService"]

log = logging.getLogger("kumoq.admin")

Json = dict[str, Any]
#: fires the policy's ``rebind_message(msg, data)`` event (kumoq.lua.events.PolicyEvents.call)
RebindEvent = Callable[[Message, dict[str, str]], object]

MAX_INSPECT: Final = 100_000  # inspect-sched-q without a limit lists at most this many


class AdminService:
    def __init__(
        self,
        *,
        queues: QueueManager,
        smtp: SmtpDispatch,
        spool: Spool,
        records: RecordSink,
        clock: Clock,
        progress: CampaignProgress,
        rebind_event: RebindEvent | None = None,
    ) -> None:
        self._queues = queues
        self._smtp = smtp
        self._spool = spool
        self._records = records
        self._clock = clock
        self._progress = progress
        self._rebind_event = rebind_event
        self._rules = queues.rules
        self._dead = queues.dispositions.dead_letters

    # -- bounce --------------------------------------------------------------------------------

    async def bounce(
        self,
        criteria: AdminCriteria,
        reason: str,
        duration: float,
        suppress_logging: bool,
        rule_id: str | None = None,
    ) -> Json:
        now = self._clock.now()
        rule = self._rules.add_bounce(
            criteria, reason, now=now, duration=duration,
            suppress_logging=suppress_logging, rule_id=rule_id,
        )  # fmt: skip
        for queue in self._matching(criteria):
            taken = queue.take_all()
            rule.count(queue.name, len(taken))
            for msg in taken:
                await self._queues.dispositions.admin_bounce(
                    msg, reason, suppress_logging=suppress_logging
                )
        return {
            "id": rule.id,
            "bounced": dict(rule.bounced),
            "total_bounced": sum(rule.bounced.values()),
        }

    def bounce_list(self) -> list[Json]:
        now = self._clock.now()
        return [rule.to_json(now) for rule in self._rules.bounces(now)]

    def bounce_cancel(self, rule_id: str) -> bool:
        return self._rules.cancel_bounce(rule_id)

    # -- suspend -------------------------------------------------------------------------------

    def suspend(
        self, criteria: AdminCriteria, reason: str, duration: float, rule_id: str | None = None
    ) -> Json:
        rule = self._rules.add_suspend(
            criteria, reason, now=self._clock.now(), duration=duration, rule_id=rule_id
        )
        return {"id": rule.id}

    def suspend_list(self) -> list[Json]:
        now = self._clock.now()
        return [rule.to_json(now) for rule in self._rules.suspends(now)]

    def suspend_cancel(self, rule_id: str) -> bool:
        now = self._clock.now()
        rule = next((r for r in self._rules.suspends(now) if r.id == rule_id), None)
        if rule is None or not self._rules.cancel_suspend(rule_id):
            return False
        # Delivery resumes now, not at each message's next retry.
        for queue in self._matching(rule.criteria):
            if self._rules.suspension_for(queue.name, queue.parts, now) is None:
                self._retry_queue(queue)
        return True

    def suspend_ready_q(
        self, name: str, reason: str, duration: float, rule_id: str | None = None
    ) -> Json:
        now = self._clock.now()
        rule = self._rules.add_ready_suspension(
            name, reason, now=now, duration=duration, rule_id=rule_id
        )
        return {"id": rule.id}

    def suspend_ready_q_list(self) -> list[Json]:
        now = self._clock.now()
        return [rule.to_json(now) | {"expires": rfc3339(rule.expires)}
                for rule in self._rules.ready_suspensions(now)]  # fmt: skip

    def suspend_ready_q_cancel(self, rule_id: str) -> bool:
        return self._rules.cancel_ready_suspension(rule_id)

    # -- rebind --------------------------------------------------------------------------------

    async def rebind(
        self,
        criteria: AdminCriteria,
        reason: str,
        data: dict[str, str],
        always_flush: bool,
        suppress_logging: bool,
        trigger_rebind_event: bool,
    ) -> Json:
        """KumoMTA's rebind: ``data`` is merged into each matching message's meta (or given to
        the ``rebind_message`` event), which may move it to another queue; ``always_flush``
        makes every matching message due now, else only those whose queue changed."""
        if trigger_rebind_event and self._rebind_event is None:
            raise AdminRequestError(400, "trigger_rebind_event: the policy has no events here")
        rebound = 0
        for queue in self._matching(criteria):
            for msg in queue.take_all():
                old = queue.name
                try:
                    if trigger_rebind_event:
                        assert self._rebind_event is not None
                        self._rebind_event(msg, data)
                    else:
                        msg.meta.update(data)
                    new = msg.queue_name()
                except (PolicyError, KumoqError) as exc:
                    log.error("rebind: message %s keeps its queue: %s", msg.id, exc)
                    new = old
                if always_flush or new != old:  # KumoMTA: a moved message is due now
                    msg.due = None
                await self._persist(msg)  # its new meta, and its due time
                if not suppress_logging:
                    text = f"Rebound from {old} to {new}: {reason}"
                    self._log(RecordType.AdminRebind, msg, Response(250, None, text, None))
                self._queues.insert(msg, InsertContext(InsertReason.AdminRebind))
                rebound += 1
        return {"rebound": rebound}

    # -- inspection ----------------------------------------------------------------------------

    async def inspect_sched_q(
        self, queue_name: str, want_body: bool, limit: int | None
    ) -> Json | None:
        queue = self._queues.get(queue_name)
        if queue is None:
            return None
        wanted = MAX_INSPECT if limit is None else min(limit, MAX_INSPECT)
        messages: list[Message] = []
        cursor: str | None = None
        while len(messages) < wanted:
            page, cursor = queue.page(cursor, min(1000, wanted - len(messages)))
            messages += page
            if cursor is None:
                break
        now = self._clock.now()
        return {
            "queue_name": queue_name,
            "queue_config": _config_json(queue.config),
            "delayed_metric": len(queue),
            "now": rfc3339(now),
            "last_changed": rfc3339(now),
            "num_scheduled": len(queue),
            "messages": [
                {"id": msg.id, "message": await self._message_json(msg, want_body)}
                for msg in messages
            ],
        }

    async def inspect_message(self, msg_id: str, want_body: bool) -> Json | None:
        found = self._queues.find(msg_id)
        if found is not None:
            msg, queue = found
            waiting = self._why_waiting(msg, queue)
            state = msg.state[0] if msg.state else "waiting"
        else:
            dead = self._dead.get(msg_id)
            if dead is None:
                return None
            msg, queue = dead.msg, None
            state = "dead_letter"
            waiting = {
                "reason": "dead_letter",
                "until": rfc3339(dead.until),
                "detail": f"kept as a dead letter after its {dead.record_type.value} "
                f"({dead.response.one_line()}) until {rfc3339(dead.until)}",
            }
        return {
            "id": msg_id,
            "message": await self._message_json(msg, want_body),
            "queue": queue.name if queue is not None else _queue_of(msg),
            "state": state,
            "waiting": waiting,
        }

    def _why_waiting(self, msg: Message, queue: ScheduledQueue | None) -> Json:
        now = self._clock.now()
        state, detail, until = msg.state or ("waiting", "", msg.due)
        parts: list[str] = []
        if state == "scheduled" and until is not None:
            parts.append(f"its next attempt is due at {rfc3339(until)} "
                         f"(in {format_duration(max(0.0, round(until - now)))})")  # fmt: skip
            if msg.num_attempts:
                parts.append(f"after {msg.num_attempts} attempt(s)")
            if detail:
                parts.append(f"context: {detail}")
        elif state == "rate_throttled" and queue is not None:
            rate = queue.config.max_message_rate
            parts.append(f"held by its queue's max_message_rate ({rate}); released at "
                         f"{rfc3339(until or now)}")  # fmt: skip
        elif state == "in_flight":
            where = self._smtp.describe(msg.id)
            parts.append(where or "a delivery attempt is in progress")
        elif state == "policy_failed":
            parts.append("its queue's get_queue_config failed; it is tried again within 60 s")
        elif state == "dns_wait":
            parts.append(detail)
        if msg.last_response:
            parts.append(f"last response: {msg.last_response}")
        if queue is not None:
            suspended = self._rules.suspension_for(queue.name, queue.parts, now)
            if suspended is not None:
                parts.append(f"its queue is suspended until {rfc3339(suspended.expires)}: "
                             f"{suspended.reason}")  # fmt: skip
            bounce = self._rules.bounce_for(queue.name, queue.parts, now)
            if bounce is not None:
                parts.append(f"an admin bounce rule matches its queue: {bounce.reason}")
        return {
            "reason": state,
            "until": rfc3339(until) if until is not None else None,
            "detail": "; ".join(p for p in parts if p),
        }

    def ready_q_states(self, queues: list[str]) -> Json:
        now = self._clock.now()
        states: Json = {}
        for rule in self._rules.ready_suspensions(now):
            if queues and rule.name not in queues:
                continue
            states[rule.name] = {
                "suspended": {"context": rule.reason, "since": None,
                              "expires": rfc3339(rule.expires)},
            }  # fmt: skip
        for ready in self._smtp.ready_queues.values():
            if (queues and ready.name not in queues) or not ready.failures.count:
                continue
            states.setdefault(ready.name, {})["connection_failures"] = {
                "context": f"{ready.failures.count} connection failures in a row",
            }
        return {"states_by_ready_queue": states}

    def queue_messages(self, queue_name: str, cursor: str | None, limit: int) -> Json | None:
        queue = self._queues.get(queue_name)
        if queue is None:
            return None
        try:
            page, next_cursor = queue.page(cursor, limit)
        except ValueError as exc:
            raise AdminRequestError(400, str(exc), "cursor") from None
        return {
            "queue_name": queue_name,
            "num_scheduled": len(queue),
            "messages": [_summary(msg) for msg in page],
            "next_cursor": next_cursor,
        }

    # -- per-message control ---------------------------------------------------------------

    async def retry(
        self, msg_id: str | None, queue_name: str | None, criteria: AdminCriteria | None
    ) -> Json:
        retried = 0
        if msg_id is not None:
            found = self._queues.find(msg_id)
            if found is None:
                raise AdminRequestError(404, f"no waiting message with id {msg_id}", "id")
            msg, queue = found
            if queue is not None and queue.remove(msg_id) is not None:
                self._retry(msg)
                retried = 1
            elif (parked := self._queues.unpark(msg_id)) is not None:
                self._retry(parked)
                retried = 1
        elif queue_name is not None:
            queue = self._queues.get(queue_name)
            if queue is None:
                raise AdminRequestError(404, f"no scheduled queue named {queue_name}", "queue_name")
            retried = self._retry_queue(queue)
        else:
            for queue in self._matching(criteria or AdminCriteria()):
                retried += self._retry_queue(queue)
        return {"retried": retried}

    def _retry_queue(self, queue: ScheduledQueue) -> int:
        taken = queue.take_all()
        for msg in taken:
            self._retry(msg)
        return len(taken)

    def _retry(self, msg: Message) -> None:
        msg.due = None
        self._queues.insert(msg, InsertContext(InsertReason.DueTimeWasReached))

    async def delete_message(self, msg_id: str, reason: str) -> bool:
        found = self._queues.find(msg_id)
        if found is None:
            return await self._dead.purge([msg_id], f"purged by the operator: {reason}") == 1
        _, queue = found
        taken = queue.remove(msg_id) if queue is not None else None
        taken = taken or self._queues.unpark(msg_id)
        if taken is None:
            raise AdminRequestError(
                409, f"message {msg_id} is being delivered now; ask again when the attempt ends"
            )
        await self._queues.dispositions.admin_bounce(taken, reason, suppress_logging=False)
        return True

    def campaign_progress(self, campaign: str | None, tenant: str | None) -> list[Json]:
        return self._progress.report(campaign, tenant)

    # -- dead letters --------------------------------------------------------------------------

    def dead_letter_list(self, queue_name: str | None, cursor: str | None, limit: int) -> Json:
        try:
            page, next_cursor = self._dead.page(queue_name, cursor, limit)
        except ValueError as exc:
            raise AdminRequestError(400, str(exc), "cursor") from None
        return {
            "messages": [entry.to_json() for entry in page],
            "total": len(self._dead),
            "next_cursor": next_cursor,
        }

    async def dead_letter_show(self, msg_id: str, want_body: bool) -> Json | None:
        entry = self._dead.get(msg_id)
        if entry is None:
            return None
        return entry.to_json() | {"message": await self._message_json(entry.msg, want_body)}

    async def dead_letter_requeue(self, ids: list[str] | None, queue_name: str | None) -> Json:
        return {"requeued": await self._dead.requeue(self._dead.select(ids, queue_name))}

    async def dead_letter_purge(self, ids: list[str] | None, queue_name: str | None) -> Json:
        return {"purged": await self._dead.purge(self._dead.select(ids, queue_name))}

    # -- helpers -------------------------------------------------------------------------------

    def _matching(self, criteria: AdminCriteria) -> list[ScheduledQueue]:
        return [q for q in list(self._queues.queues()) if criteria.matches(q.name, q.parts)]

    async def _message_json(self, msg: Message, want_body: bool) -> Json:
        out: Json = {
            "sender": msg.sender.email,
            "recipient": msg.recipient.email,
            "meta": msg.meta,
            "due": rfc3339(msg.due) if msg.due is not None else None,
            "num_attempts": msg.num_attempts,
            "scheduling": msg.schedule,
        }
        if want_body:
            try:
                data = msg.data if msg.has_data else await self._spool.load_data(msg.id)
            except KumoqError as exc:
                raise AdminRequestError(500, f"cannot load the message body: {exc}") from None
            out["data"] = (data or b"").decode("utf-8", "replace")
        return out

    async def _persist(self, msg: Message) -> None:
        try:
            await self._spool.store(msg.id, None, json.dumps(msg.to_spool_meta()).encode())
        except KumoqError as exc:
            log.error("message %s: cannot persist its new meta: %s", msg.id, exc)

    def _log(self, kind: RecordType, msg: Message, response: Response) -> None:
        try:
            self._records.log(kind, msg, response=response)
        except Exception:
            log.exception("message %s: writing its %s record failed", msg.id, kind)


def _queue_of(msg: Message) -> str | None:
    try:
        return msg.queue_name()
    except KumoqError:
        return None


def _summary(msg: Message) -> Json:
    return {
        "id": msg.id,
        "sender": msg.sender.email,
        "recipient": msg.recipient.email,
        "due": rfc3339(msg.due) if msg.due is not None else None,
        "num_attempts": msg.num_attempts,
        "priority": priority_of(msg),
        "last_response": msg.last_response,
    }


def _config_json(value: Any) -> Any:
    """A config dataclass as JSON-able data (enums by value, durations in seconds)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _config_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_config_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _config_json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
