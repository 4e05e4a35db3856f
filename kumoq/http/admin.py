"""The admin API (reference §6.1): KumoMTA's ``/api/admin/*`` endpoints, with its paths, verbs
and JSON shapes, and kumoq's own for per-message control and dead letters.

KumoMTA's: ``bounce``, ``suspend`` and ``suspend-ready-q`` (POST makes a rule, GET lists them,
DELETE ``{id}`` cancels one: 404 when unknown), ``rebind``, ``inspect-sched-q``,
``inspect-message`` and ``ready-q-states``. Ours: ``queue-messages`` (a queue's messages a page
at a time), ``retry`` (due now: one message, a queue, matching queues or everything),
``delete-message``, ``campaign-progress``, and the dead letters (``dead-letters`` lists,
``dead-letter`` shows one, ``dead-letters/requeue`` and ``dead-letters/purge``).

Each handler checks its request against the field tuples of kumoq.http.admin_schema (4xx
JSON naming the field), calls the ``AdminSeam`` (kumoq.http.admin_seam) and answers what it
returns as JSON; a seam answer of None or False is a 404, and an ``AdminRequestError`` it
raises becomes its status and message. Selectors that would act on every message must say
``everything: true`` (retry, requeue, purge), so an empty body never does.

None of these routes is public: a peer in ``trusted_hosts``, or Basic auth. A sibling worker
(``kumoq serve --workers N``: kumoq.http.fanout) that makes a rule names its id in
``X-Kumoq-Rule-Id``; from anyone else that header is ignored.

Imports kumoq.http.app, .auth, .body, .errors, .admin_schema, .admin_seam, kumoq.clock,
kumoq.errors, kumoq.workers and kumoq.scheduler.admin_rules; must not import the other route
modules.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from kumoq.clock import Clock
from kumoq.errors import AdminRequestError
from kumoq.http import admin_schema as schema
from kumoq.http.admin_seam import AdminSeam
from kumoq.http.app import Handler, Route
from kumoq.http.auth import AuthInfo
from kumoq.http.body import read_json
from kumoq.http.errors import ApiError
from kumoq.scheduler.admin_rules import AdminCriteria, criteria_from_mapping
from kumoq.workers import RULE_ID_HEADER

__all__ = ["PATHS", "AdminApi", "routes"]

_A: Final = "/api/admin"

#: Every admin path, by its short name.
PATHS: Final = {
    "bounce": f"{_A}/bounce/v1",
    "suspend": f"{_A}/suspend/v1",
    "suspend-ready-q": f"{_A}/suspend-ready-q/v1",
    "rebind": f"{_A}/rebind/v1",
    "inspect-sched-q": f"{_A}/inspect-sched-q/v1",
    "inspect-message": f"{_A}/inspect-message/v1",
    "ready-q-states": f"{_A}/ready-q-states/v1",
    "queue-messages": f"{_A}/queue-messages/v1",
    "retry": f"{_A}/retry/v1",
    "delete-message": f"{_A}/delete-message/v1",
    "campaign-progress": f"{_A}/campaign-progress/v1",
    "dead-letters": f"{_A}/dead-letters/v1",
    "dead-letter": f"{_A}/dead-letter/v1",
    "dead-letters-requeue": f"{_A}/dead-letters/requeue/v1",
    "dead-letters-purge": f"{_A}/dead-letters/purge/v1",
}

DELETE_REASON: Final = "deleted by an administrator"

_Json = Any


def _ok(value: _Json) -> web.Response:
    return web.json_response(value)


def _not_found(what: str, value: str, field: str) -> ApiError:
    return ApiError(404, f"no such {what}: {value}", field=field)


def _sibling_rule_id(request: web.Request, auth: AuthInfo) -> str | None:
    """The rule id a sibling worker made (``X-Kumoq-Rule-Id``); None from anyone else."""
    if not auth.sibling or RULE_ID_HEADER not in request.headers:
        return None
    try:
        return str(uuid.UUID(request.headers[RULE_ID_HEADER]))
    except ValueError:
        raise ApiError(400, f"{RULE_ID_HEADER}: not a UUID") from None


def _one_of(forms: list[str], allowed: str, action: str) -> str | None:
    """The single selector form given; 400 for none or several."""
    if not forms:
        raise ApiError(400, f"say which messages to {action}: {allowed}")
    if len(forms) > 1:
        raise ApiError(400, f"give only one of {allowed}; got {' and '.join(forms)}",
                       field=forms[1])  # fmt: skip
    return forms[0]


class AdminApi:
    """The admin endpoints of one listener, over one ``AdminSeam``."""

    def __init__(self, seam: AdminSeam, clock: Clock, body_limit: int) -> None:
        self._seam = seam
        self._clock = clock
        self._body_limit = body_limit

    async def _body(self, request: web.Request, fields: tuple[schema.Field, ...]) -> dict[str, Any]:
        document = await read_json(request, self._body_limit)
        return schema.parse_body(document, fields, self._clock.now())

    # -- KumoMTA's: bounce, suspend, suspend-ready-q ------------------------------------------

    async def bounce(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.BOUNCE)
        return _ok(await self._seam.bounce(criteria_from_mapping(p), p["reason"],
                                           schema.rule_duration(p),
                                           p.get("suppress_logging", False),
                                           _sibling_rule_id(request, auth)))  # fmt: skip

    async def bounce_list(self, request: web.Request, auth: AuthInfo) -> web.Response:
        schema.parse_query(request.query, ())
        return _ok(self._seam.bounce_list())

    async def bounce_cancel(self, request: web.Request, auth: AuthInfo) -> web.Response:
        rule_id = (await self._body(request, schema.CANCEL))["id"]
        if not self._seam.bounce_cancel(rule_id):
            raise _not_found("bounce rule", rule_id, "id")
        return _ok({})

    async def suspend(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.SUSPEND)
        return _ok(self._seam.suspend(criteria_from_mapping(p), p["reason"],
                                      schema.rule_duration(p),
                                      _sibling_rule_id(request, auth)))  # fmt: skip

    async def suspend_list(self, request: web.Request, auth: AuthInfo) -> web.Response:
        schema.parse_query(request.query, ())
        return _ok(self._seam.suspend_list())

    async def suspend_cancel(self, request: web.Request, auth: AuthInfo) -> web.Response:
        rule_id = (await self._body(request, schema.CANCEL))["id"]
        if not self._seam.suspend_cancel(rule_id):
            raise _not_found("suspension", rule_id, "id")
        return _ok({})

    async def suspend_ready_q(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.SUSPEND_READY_Q)
        if not p["name"].strip():
            raise ApiError(400, "name: the ready queue's name must not be empty", field="name")
        return _ok(self._seam.suspend_ready_q(p["name"], p["reason"], schema.rule_duration(p),
                                              _sibling_rule_id(request, auth)))  # fmt: skip

    async def suspend_ready_q_list(self, request: web.Request, auth: AuthInfo) -> web.Response:
        schema.parse_query(request.query, ())
        return _ok(self._seam.suspend_ready_q_list())

    async def suspend_ready_q_cancel(self, request: web.Request, auth: AuthInfo) -> web.Response:
        rule_id = (await self._body(request, schema.CANCEL))["id"]
        if not self._seam.suspend_ready_q_cancel(rule_id):
            raise _not_found("ready queue suspension", rule_id, "id")
        return _ok({})

    # -- KumoMTA's: rebind and inspection ------------------------------------------------------

    async def rebind(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.REBIND)
        answer = await self._seam.rebind(
            criteria_from_mapping(p),
            p["reason"],
            p["data"],
            always_flush=p.get("always_flush", False),
            suppress_logging=p.get("suppress_logging", False),
            trigger_rebind_event=p.get("trigger_rebind_event", False),
        )
        return _ok(answer)

    async def inspect_sched_q(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.INSPECT_SCHED_Q)
        answer = await self._seam.inspect_sched_q(q["queue_name"], q["want_body"], q.get("limit"))
        if answer is None:
            raise _not_found("scheduled queue", q["queue_name"], "queue_name")
        return _ok(answer)

    async def inspect_message(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.INSPECT_MESSAGE)
        answer = await self._seam.inspect_message(q["id"], q["want_body"])
        if answer is None:
            raise _not_found("message", q["id"], "id")
        return _ok(answer)

    async def ready_q_states(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.READY_Q_STATES)
        return _ok(self._seam.ready_q_states(q.get("queues", [])))

    # -- ours: per-message control -------------------------------------------------------------

    async def queue_messages(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.QUEUE_MESSAGES)
        answer = self._seam.queue_messages(q["queue_name"], q.get("cursor"), q["limit"])
        if answer is None:
            raise _not_found("scheduled queue", q["queue_name"], "queue_name")
        return _ok(answer)

    async def retry(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.RETRY)
        criteria = criteria_from_mapping(p)
        forms: list[str] = [key for key in ("id", "queue_name") if key in p]
        if not criteria.everything:
            forms.append("criteria")
        if p.get("everything"):
            forms.append("everything")
        allowed = "id, queue_name, criteria (domain, routing_domain, campaign, tenant, " \
                  "queue_names) or everything: true"  # fmt: skip
        form = _one_of(forms, allowed, "retry")
        answer = await self._seam.retry(
            p.get("id"),
            p.get("queue_name"),
            criteria if form == "criteria" else AdminCriteria() if form == "everything" else None,
        )
        return _ok(answer)

    async def delete_message(self, request: web.Request, auth: AuthInfo) -> web.Response:
        p = await self._body(request, schema.DELETE_MESSAGE)
        if not await self._seam.delete_message(p["id"], p.get("reason") or DELETE_REASON):
            raise _not_found("message", p["id"], "id")
        return _ok({"id": p["id"], "deleted": True})

    async def campaign_progress(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.CAMPAIGN_PROGRESS)
        return _ok(self._seam.campaign_progress(q.get("campaign"), q.get("tenant")))

    # -- ours: dead letters --------------------------------------------------------------------

    async def dead_letters(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.DEAD_LETTERS)
        return _ok(self._seam.dead_letter_list(q.get("queue_name"), q.get("cursor"), q["limit"]))

    async def dead_letter(self, request: web.Request, auth: AuthInfo) -> web.Response:
        q = schema.parse_query(request.query, schema.DEAD_LETTER)
        answer = await self._seam.dead_letter_show(q["id"], q["want_body"])
        if answer is None:
            raise _not_found("dead letter", q["id"], "id")
        return _ok(answer)

    async def _selection(
        self, request: web.Request, action: str
    ) -> tuple[list[str] | None, str | None]:
        p = await self._body(request, schema.DEAD_LETTER_SELECT)
        forms: list[str] = [key for key in ("ids", "queue_name") if key in p]
        if p.get("everything"):
            forms.append("everything")
        _one_of(forms, "ids, queue_name or everything: true", action)
        return p.get("ids"), p.get("queue_name")

    async def dead_letters_requeue(self, request: web.Request, auth: AuthInfo) -> web.Response:
        ids, queue_name = await self._selection(request, "requeue")
        return _ok(await self._seam.dead_letter_requeue(ids, queue_name))

    async def dead_letters_purge(self, request: web.Request, auth: AuthInfo) -> web.Response:
        ids, queue_name = await self._selection(request, "purge")
        return _ok(await self._seam.dead_letter_purge(ids, queue_name))


def _answering(handler: Handler) -> Handler:
    """``handler`` with the seam's AdminRequestError answered as its status and message."""

    async def handle(request: web.Request, auth: AuthInfo) -> web.StreamResponse:
        try:
            return await handler(request, auth)
        except AdminRequestError as exc:
            raise ApiError(exc.status, str(exc), field=exc.field) from None

    return handle


def routes(seam: AdminSeam, clock: Clock, body_limit: int) -> list[Route]:
    api = AdminApi(seam, clock, body_limit)
    table: list[tuple[str, str, Callable[[web.Request, AuthInfo], Awaitable[web.Response]]]] = [
        ("POST", "bounce", api.bounce),
        ("GET", "bounce", api.bounce_list),
        ("DELETE", "bounce", api.bounce_cancel),
        ("POST", "suspend", api.suspend),
        ("GET", "suspend", api.suspend_list),
        ("DELETE", "suspend", api.suspend_cancel),
        ("POST", "suspend-ready-q", api.suspend_ready_q),
        ("GET", "suspend-ready-q", api.suspend_ready_q_list),
        ("DELETE", "suspend-ready-q", api.suspend_ready_q_cancel),
        ("POST", "rebind", api.rebind),
        ("GET", "inspect-sched-q", api.inspect_sched_q),
        ("GET", "inspect-message", api.inspect_message),
        ("GET", "ready-q-states", api.ready_q_states),
        ("GET", "queue-messages", api.queue_messages),
        ("POST", "retry", api.retry),
        ("POST", "delete-message", api.delete_message),
        ("GET", "campaign-progress", api.campaign_progress),
        ("GET", "dead-letters", api.dead_letters),
        ("GET", "dead-letter", api.dead_letter),
        ("POST", "dead-letters-requeue", api.dead_letters_requeue),
        ("POST", "dead-letters-purge", api.dead_letters_purge),
    ]
    return [Route(method, PATHS[name], _answering(handler)) for method, name, handler in table]
