"""A fake ``AdminSeam`` and a listener serving it on 127.0.0.1, for the admin API's and the
CLI's unit tests (``AdminSeam`` is our own Protocol: kumoq.http.admin_seam).

``FakeAdmin`` records every call as ``(method name, arguments)`` and answers from ``answers``
(a value, or a callable given the arguments); an ``AdminRequestError`` in ``fail`` is raised
by the next call instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kumoq.clock import FakeClock
from kumoq.config.http import HttpListenerConfig
from kumoq.errors import AdminRequestError
from kumoq.http import HttpListener, HttpServices, start_http_listener
from kumoq.message import Message
from kumoq.scheduler.admin_rules import AdminCriteria

RULE = "552016f1-08e7-4e90-9da3-fd5c25acd069"
MSG = "d7ef132b5d7711eea8c8000c29c33806"
OTHER_MSG = "0123456789abcdef0123456789abcdef"


def _message(want_body: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "sender": "sender@example.com",
        "recipient": "rcpt@example.com",
        "meta": {"tenant": "news"},
        "due": "2023-11-14T22:18:20Z",
        "num_attempts": 2,
        "scheduling": None,
    }
    if want_body:
        info["data"] = "Subject: hi\r\n\r\nhello\r\n"
    return info


def _default_answers() -> dict[str, Any]:
    return {
        "bounce": {"id": RULE, "bounced": {"example.com": 2}, "total_bounced": 2},
        "bounce_list": [
            {
                "id": RULE,
                "reason": "bad send",
                "domain": "example.com",
                "routing_domain": None,
                "campaign": None,
                "tenant": None,
                "duration": "4m 59s",
                "bounced": {"example.com": 2},
                "total_bounced": 1234,
            },
        ],
        "bounce_cancel": lambda rule_id: rule_id == RULE,
        "suspend": {"id": RULE},
        "suspend_list": [
            {
                "id": RULE,
                "reason": "postmaster",
                "domain": None,
                "routing_domain": None,
                "campaign": "fall",
                "tenant": None,
                "duration": "1h",
            },
        ],
        "suspend_cancel": lambda rule_id: rule_id == RULE,
        "suspend_ready_q": {"id": RULE},
        "suspend_ready_q_list": [
            {
                "id": RULE,
                "name": "unspecified->mx.example.com@smtp_client",
                "reason": "maint",
                "duration": "5m",
                "expires": 1_700_000_300.0,
            },
        ],
        "suspend_ready_q_cancel": lambda rule_id: rule_id == RULE,
        "rebind": {"rebound": 3},
        "inspect_sched_q": lambda name, want_body, limit: (
            None
            if name == "missing"
            else {
                "queue_name": name,
                "queue_config": {},
                "delayed_metric": 0,
                "now": "2023-11-14T22:13:20Z",
                "last_changed": "2023-11-14T22:13:00Z",
                "num_scheduled": 1,
                "messages": [{"id": MSG, "message": _message(want_body)}],
            }
        ),
        "inspect_message": lambda msg_id, want_body: (
            None
            if msg_id != MSG
            else {
                "id": MSG,
                "message": _message(want_body),
                "queue": "example.com",
                "state": "scheduled",
                "waiting": {
                    "reason": "scheduled",
                    "until": "2023-11-14T22:18:20Z",
                    "detail": "its next attempt after 451 4.7.1 try later",
                },
            }
        ),
        "ready_q_states": lambda queues: {"states_by_ready_queue": {q: {} for q in queues}},
        "queue_messages": _queue_messages,
        "retry": {"retried": 2},
        "delete_message": lambda msg_id, reason: msg_id == MSG,
        "campaign_progress": [
            {
                "campaign": "fall",
                "tenant": "news",
                "received": 1200,
                "delivered": 1000,
                "transient_failures": 50,
                "bounced": 30,
                "expired": 2,
                "pending": 168,
            },
        ],
        "dead_letter_list": lambda queue_name, cursor, limit: {
            "messages": [
                {
                    "id": MSG,
                    "queue": "example.com",
                    "sender": "sender@example.com",
                    "recipient": "rcpt@example.com",
                    "record_type": "Bounce",
                    "response": "550 5.1.1 no such user",
                    "since": "2023-11-14T22:13:20Z",
                    "until": "2023-11-21T22:13:20Z",
                    "num_attempts": 1,
                },
            ],
            "total": 1,
            "next_cursor": None,
        },
        "dead_letter_show": lambda msg_id, want_body: (
            None
            if msg_id != MSG
            else {
                "id": MSG,
                "queue": "example.com",
                "record_type": "Bounce",
                "response": "550 5.1.1 no such user",
                "message": _message(want_body),
            }
        ),
        "dead_letter_requeue": {"requeued": 1},
        "dead_letter_purge": {"purged": 1},
    }


def _queue_messages(queue_name: str, cursor: str | None, limit: int) -> dict[str, Any] | None:
    if queue_name == "missing":
        return None
    if cursor not in (None, "page2"):
        raise AdminRequestError(400, f"cursor {cursor!r} does not parse", "cursor")
    first = cursor is None
    return {
        "queue_name": queue_name,
        "num_scheduled": 2,
        "messages": [
            {
                "id": MSG if first else OTHER_MSG,
                "sender": "sender@example.com",
                "recipient": "rcpt@example.com",
                "due": "2023-11-14T22:18:20Z",
                "num_attempts": 1,
                "priority": 1,
                "last_response": "451 4.7.1 try later",
            },
        ],
        "next_cursor": "page2" if first else None,
    }


@dataclass
class FakeAdmin:
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=_default_answers)
    fail: AdminRequestError | None = None
    rule_ids: list[str | None] = field(default_factory=list)  # given to bounce, suspend...

    def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        answer = self.answers[name]
        return answer(*args) if callable(answer) else answer

    async def bounce(
        self,
        criteria: AdminCriteria,
        reason: str,
        duration: float,
        suppress_logging: bool,
        rule_id: str | None = None,
    ) -> Any:
        self.rule_ids.append(rule_id)
        return self._answer("bounce", criteria, reason, duration, suppress_logging)

    def bounce_list(self) -> Any:
        return self._answer("bounce_list")

    def bounce_cancel(self, rule_id: str) -> Any:
        return self._answer("bounce_cancel", rule_id)

    def suspend(
        self, criteria: AdminCriteria, reason: str, duration: float, rule_id: str | None = None
    ) -> Any:
        self.rule_ids.append(rule_id)
        return self._answer("suspend", criteria, reason, duration)

    def suspend_list(self) -> Any:
        return self._answer("suspend_list")

    def suspend_cancel(self, rule_id: str) -> Any:
        return self._answer("suspend_cancel", rule_id)

    def suspend_ready_q(
        self, name: str, reason: str, duration: float, rule_id: str | None = None
    ) -> Any:
        self.rule_ids.append(rule_id)
        return self._answer("suspend_ready_q", name, reason, duration)

    def suspend_ready_q_list(self) -> Any:
        return self._answer("suspend_ready_q_list")

    def suspend_ready_q_cancel(self, rule_id: str) -> Any:
        return self._answer("suspend_ready_q_cancel", rule_id)

    async def rebind(
        self,
        criteria: AdminCriteria,
        reason: str,
        data: dict[str, str],
        always_flush: bool,
        suppress_logging: bool,
        trigger_rebind_event: bool,
    ) -> Any:
        return self._answer(
            "rebind", criteria, reason, data, always_flush, suppress_logging, trigger_rebind_event
        )

    async def inspect_sched_q(self, queue_name: str, want_body: bool, limit: int | None) -> Any:
        return self._answer("inspect_sched_q", queue_name, want_body, limit)

    async def inspect_message(self, msg_id: str, want_body: bool) -> Any:
        return self._answer("inspect_message", msg_id, want_body)

    def ready_q_states(self, queues: list[str]) -> Any:
        return self._answer("ready_q_states", queues)

    def queue_messages(self, queue_name: str, cursor: str | None, limit: int) -> Any:
        return self._answer("queue_messages", queue_name, cursor, limit)

    async def retry(
        self, msg_id: str | None, queue_name: str | None, criteria: AdminCriteria | None
    ) -> Any:
        return self._answer("retry", msg_id, queue_name, criteria)

    async def delete_message(self, msg_id: str, reason: str) -> Any:
        return self._answer("delete_message", msg_id, reason)

    def campaign_progress(self, campaign: str | None, tenant: str | None) -> Any:
        return self._answer("campaign_progress", campaign, tenant)

    def dead_letter_list(self, queue_name: str | None, cursor: str | None, limit: int) -> Any:
        return self._answer("dead_letter_list", queue_name, cursor, limit)

    async def dead_letter_show(self, msg_id: str, want_body: bool) -> Any:
        return self._answer("dead_letter_show", msg_id, want_body)

    async def dead_letter_requeue(self, ids: list[str] | None, queue_name: str | None) -> Any:
        return self._answer("dead_letter_requeue", ids, queue_name)

    async def dead_letter_purge(self, ids: list[str] | None, queue_name: str | None) -> Any:
        return self._answer("dead_letter_purge", ids, queue_name)


class _Reception:
    def ready(self) -> bool:
        return True

    @property
    def storage_problem(self) -> str | None:
        return None

    async def admit(
        self, messages: list[Message], *, peer: dict[str, str], reception_protocol: str
    ) -> list[str | None]:
        return [None] * len(messages)


class _Policy:
    """Basic auth: ``daniel``/``tiger`` only."""

    def has_handler(self, name: str) -> bool:
        return name == "http_server_validate_auth_basic"

    def call(self, name: str, *args: object) -> Any:
        return args == ("daniel", "tiger")


@dataclass
class AdminRig:
    admin: FakeAdmin
    listener: HttpListener

    @property
    def url(self) -> str:
        assert self.listener.address is not None
        host, port = self.listener.address
        return f"http://{host}:{port}"


class AdminRigs:
    """Starts listeners serving a fake AdminSeam; closes them all at the end::

    @pytest.fixture
    async def admin_rig():
        async with AdminRigs() as rigs:
            yield rigs.start
    """

    def __init__(self) -> None:
        self._listeners: list[HttpListener] = []

    async def start(self, *, admin: FakeAdmin | None = None, **config: Any) -> AdminRig:
        """A listener on 127.0.0.1:0 with ``config`` (start_http_listener's keys)."""
        fake = admin or FakeAdmin()
        cfg = HttpListenerConfig.from_mapping(
            {"listen": "127.0.0.1:0", "hostname": "h.test", **config}
        )
        services = HttpServices(_Reception(), _Policy(), FakeClock(), admin=fake)
        listener = await start_http_listener(cfg, services)
        self._listeners.append(listener)
        return AdminRig(fake, listener)

    async def __aenter__(self) -> AdminRigs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for listener in self._listeners:
            await listener.close()
        await asyncio.sleep(0)
