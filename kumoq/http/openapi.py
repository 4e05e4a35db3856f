"""``GET /api/openapi.json``: an OpenAPI 3.1 description of every route kumoq serves.

The document is built from the ``OPERATIONS`` table below: for each endpoint its method and
path, a summary, its query parameters and request body (the admin ones are the field tuples of
kumoq.http.admin_schema, the same the routes check requests against), and its answers with an
example. tests/unit/test_http_openapi.py checks that the table and the routes a listener
registers are the same set, so neither can drift. Without an admin seam the admin paths are
left out, as they are not served.

Behind authentication like the admin API (trusted_hosts or Basic auth).

Imports kumoq.http.app, .auth, .admin (its paths), .admin_schema and kumoq; must not import
kumoq.http.server.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from kumoq import __version__
from kumoq.http import admin_schema as schema
from kumoq.http.admin import PATHS
from kumoq.http.app import Route
from kumoq.http.auth import AuthInfo

__all__ = ["KIND_SCHEMAS", "OPERATIONS", "PATH", "Operation", "document", "routes"]

PATH: Final = "/api/openapi.json"
_ID = "d7ef132b5d7711eea8c8000c29c33806"
_RULE = "552016f1-08e7-4e90-9da3-fd5c25acd069"
_ERROR = {"$ref": "#/components/schemas/Error"}
_HEX32 = "^[0-9a-f]{32}$"

#: The JSON schema of each kind of field.
KIND_SCHEMAS: Final[dict[schema.Kind, dict[str, Any]]] = {
    schema.Kind.TEXT: {"type": "string"},
    schema.Kind.NULLABLE_TEXT: {"type": ["string", "null"]},
    schema.Kind.TEXT_LIST: {"type": "array", "items": {"type": "string"}},
    schema.Kind.FLAG: {"type": "boolean"},
    schema.Kind.DURATION: {
        "type": ["string", "number", "null"],
        "description": "humantime text such as '5m', '1h 30m' or '2 days', or seconds",
    },
    schema.Kind.TIMESTAMP: {"type": ["string", "null"], "format": "date-time"},
    schema.Kind.TEXT_MAP: {"type": "object", "additionalProperties": {"type": "string"}},
    schema.Kind.RULE_ID: {"type": "string", "format": "uuid"},
    schema.Kind.SPOOL_ID: {"type": "string", "pattern": _HEX32},
    schema.Kind.SPOOL_ID_LIST: {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "pattern": _HEX32},
    },
    schema.Kind.QUERY_FLAG: {"type": "boolean", "default": False},
    schema.Kind.QUERY_COUNT: {"type": "integer", "minimum": 0},
    schema.Kind.QUERY_PAGE: {
        "type": "integer",
        "minimum": 1,
        "maximum": schema.MAX_PAGE,
        "default": schema.DEFAULT_PAGE,
    },
    schema.Kind.QUERY_TEXT_LIST: {
        "type": "array",
        "items": {"type": "string"},
        "description": "comma-separated, or the parameter repeated",
    },
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint. ``body`` is a field tuple or a JSON schema; ``answer`` the 200 example."""

    method: str
    path: str
    summary: str
    tag: str
    answer: Any = None
    query: tuple[schema.Field, ...] = ()
    body: tuple[schema.Field, ...] | dict[str, Any] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    public: bool = False
    admin: bool = True
    media: str = "application/json"


_MESSAGE_INFO = {
    "sender": "sender@example.com", "recipient": "rcpt@example.com", "meta": {},
    "due": "2030-01-31T12:05:00Z", "num_attempts": 1, "scheduling": None,
}  # fmt: skip
_BOUNCE_ENTRY = {
    "id": _RULE, "reason": "cleaning up a bad send", "domain": "example.com",
    "routing_domain": None, "campaign": None, "tenant": None, "duration": "4m 59s",
    "bounced": {"example.com": 3}, "total_bounced": 3,
}  # fmt: skip
_SUSPEND_ENTRY = {
    "id": _RULE, "reason": "talking to their postmaster", "domain": "example.com",
    "routing_domain": None, "campaign": None, "tenant": None, "duration": "4m 59s",
}  # fmt: skip
_READY_Q = "unspecified->mx.example.com@smtp_client"
_WAITING = {"reason": "retry", "until": "2030-01-31T12:05:00Z",
            "detail": "its next attempt, after 451 4.7.1 try again later"}  # fmt: skip
_DEAD = {
    "id": _ID, "queue": "example.com", "sender": "sender@example.com",
    "recipient": "rcpt@example.com", "record_type": "Bounce",
    "response": "550 5.1.1 no such user", "since": "2030-01-31T12:00:00Z",
    "until": "2030-02-07T12:00:00Z", "num_attempts": 1,
}  # fmt: skip
_SELECT = "exactly one of ids, queue_name or everything: true (400 otherwise)"
_INJECT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["envelope_sender", "recipients", "content"],
    "additionalProperties": False,
    "properties": {
        "envelope_sender": {"type": "string"},
        "recipients": {"type": "array", "items": {
            "type": "object", "required": ["email"], "additionalProperties": False,
            "properties": {"email": {"type": "string"}, "name": {"type": ["string", "null"]},
                           "substitutions": {"type": ["object", "null"]},
                           "metadata": {"type": ["object", "null"]}}}},
        "content": {"type": ["string", "object"],
                    "description": "the message text, or a builder object: subject, text_body, "
                                   "html_body, amp_html_body, headers, from, reply_to, "
                                   "attachments"},
        "substitutions": {"type": ["object", "null"]},
        "template_dialect": {"enum": ["Jinja", "Static", "Handlebars"]},
        "deferred_spool": {"type": "boolean"},
        "deferred_generation": {"type": "boolean"},
        "trace_headers": {"type": ["object", "null"]},
    },
}  # fmt: skip

OPERATIONS: Final = (
    Operation("GET", "/api/check-liveness/v1", "may a load balancer send mail here now?",
              "liveness", {"status": "OK"}, errors={503: "starting, shutting down, or storage "
                                                         "too full"},
              public=True, admin=False),
    Operation("POST", "/api/inject/v1", "inject messages: one per recipient (KumoMTA's "
              "InjectV1Request)", "inject",
              {"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []},
              body=_INJECT_BODY, errors={413: "body over request_body_limit",
                                         422: "a template does not compile",
                                         503: "not accepting mail now"}, admin=False),
    Operation("GET", "/metrics", "every metric in the Prometheus text format", "metrics",
              "# TYPE total_messages_delivered counter\n",
              query=(schema.Field("prefix", schema.Kind.TEXT, "only names starting so"),),
              admin=False, media="text/plain"),
    Operation("GET", "/metrics.json", "every metric as KumoMTA's JSON", "metrics",
              {"total_messages_delivered": {"type": "counter", "value": {"service": {}}}},
              query=(schema.Field("prefix", schema.Kind.TEXT, "only names starting so"),),
              admin=False),
    Operation("GET", PATH, "this document", "openapi", {"openapi": "3.1.0"}, admin=False),
    # KumoMTA's admin API
    Operation("POST", PATHS["bounce"], "bounce queued and arriving messages that match",
              "bounce", {"id": _RULE, "bounced": {"example.com": 3}, "total_bounced": 3},
              body=schema.BOUNCE),
    Operation("GET", PATHS["bounce"], "the bounce rules in effect", "bounce", [_BOUNCE_ENTRY]),
    Operation("DELETE", PATHS["bounce"], "cancel a bounce rule", "bounce", {},
              body=schema.CANCEL, errors={404: "no such rule"}),
    Operation("POST", PATHS["suspend"], "hold the matching scheduled queues", "suspend",
              {"id": _RULE}, body=schema.SUSPEND),
    Operation("GET", PATHS["suspend"], "the suspensions in effect", "suspend", [_SUSPEND_ENTRY]),
    Operation("DELETE", PATHS["suspend"], "cancel a suspension; delivery resumes at once",
              "suspend", {}, body=schema.CANCEL, errors={404: "no such rule"}),
    Operation("POST", PATHS["suspend-ready-q"], "hold a ready queue (an egress path)",
              "suspend", {"id": _RULE}, body=schema.SUSPEND_READY_Q),
    Operation("GET", PATHS["suspend-ready-q"], "the ready queue suspensions in effect",
              "suspend", [{"id": _RULE, "name": _READY_Q, "reason": "maintenance",
                           "duration": "4m 59s", "expires": 1896523200.0}]),
    Operation("DELETE", PATHS["suspend-ready-q"], "cancel a ready queue suspension",
              "suspend", {}, body=schema.CANCEL, errors={404: "no such rule"}),
    Operation("POST", PATHS["rebind"], "move matching messages to the queues their new meta "
              "names (kumoq answers how many moved)", "rebind", {"rebound": 12},
              body=schema.REBIND),
    Operation("GET", PATHS["inspect-sched-q"], "a scheduled queue and a sample of its messages",
              "inspect", {"queue_name": "example.com", "queue_config": {}, "delayed_metric": 0,
                          "now": "2030-01-31T12:00:00Z", "last_changed": "2030-01-31T11:59:00Z",
                          "num_scheduled": 1, "messages": [{"id": _ID, "message": _MESSAGE_INFO}]},
              query=schema.INSPECT_SCHED_Q, errors={404: "no such scheduled queue"}),
    Operation("GET", PATHS["inspect-message"], "one message, and why it is waiting now",
              "inspect", {"id": _ID, "message": _MESSAGE_INFO, "queue": "example.com",
                          "state": "scheduled", "waiting": _WAITING},
              query=schema.INSPECT_MESSAGE, errors={404: "no such message"}),
    Operation("GET", PATHS["ready-q-states"], "the states holding ready queues", "inspect",
              {"states_by_ready_queue": {}}, query=schema.READY_Q_STATES),
    # ours
    Operation("GET", PATHS["queue-messages"], "a scheduled queue's messages, a page at a time",
              "messages", {"queue_name": "example.com", "num_scheduled": 1, "next_cursor": None,
                           "messages": [{"id": _ID, "sender": "sender@example.com",
                                         "recipient": "rcpt@example.com", "num_attempts": 1,
                                         "due": "2030-01-31T12:05:00Z", "priority": 1,
                                         "last_response": "451 4.7.1 try again later"}]},
              query=schema.QUEUE_MESSAGES, errors={404: "no such scheduled queue"}),
    Operation("POST", PATHS["retry"], "make waiting messages due now: exactly one of id, "
              "queue_name, criteria or everything: true", "messages", {"retried": 1},
              body=schema.RETRY),
    Operation("POST", PATHS["delete-message"], "remove one waiting message (AdminBounce record)",
              "messages", {"id": _ID, "deleted": True}, body=schema.DELETE_MESSAGE,
              errors={404: "no such message"}),
    Operation("GET", PATHS["campaign-progress"], "per campaign and tenant: what became of the "
              "messages", "messages",
              [{"campaign": "fall", "tenant": "news", "received": 10, "delivered": 7,
                "transient_failures": 2, "bounced": 1, "expired": 0, "pending": 2}],
              query=schema.CAMPAIGN_PROGRESS),
    Operation("GET", PATHS["dead-letters"], "the dead letters, a page at a time",
              "dead letters", {"messages": [_DEAD], "total": 1, "next_cursor": None},
              query=schema.DEAD_LETTERS),
    Operation("GET", PATHS["dead-letter"], "one dead letter", "dead letters", _DEAD,
              query=schema.DEAD_LETTER, errors={404: "no such dead letter"}),
    Operation("POST", PATHS["dead-letters-requeue"], "put dead letters back in their queues, "
              "attempts reset: " + _SELECT, "dead letters", {"requeued": 1},
              body=schema.DEAD_LETTER_SELECT),
    Operation("POST", PATHS["dead-letters-purge"], "remove dead letters: " + _SELECT,
              "dead letters", {"purged": 1}, body=schema.DEAD_LETTER_SELECT),
)  # fmt: skip


def _schema_of(fields: tuple[schema.Field, ...]) -> dict[str, Any]:
    properties = {}
    for f in fields:
        prop = copy.deepcopy(KIND_SCHEMAS[f.kind])
        prop["description"] = f.doc + (f" ({prop['description']})" if "description" in prop
                                       else "")  # fmt: skip
        properties[f.name] = prop
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "properties": properties}  # fmt: skip
    required = [f.name for f in fields if f.required]
    if required:
        out["required"] = required
    return out


def _parameter(f: schema.Field) -> dict[str, Any]:
    return {"name": f.name, "in": "query", "required": f.required, "description": f.doc,
            "schema": copy.deepcopy(KIND_SCHEMAS[f.kind])}  # fmt: skip


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                           "operationId": f"{op.method.lower()}_{op.path.strip('/')}"}  # fmt: skip
    if op.query:
        out["parameters"] = [_parameter(f) for f in op.query]
    if op.body is not None:
        body = op.body if isinstance(op.body, dict) else _schema_of(op.body)
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": copy.deepcopy(body)}},
        }
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {op.media: {"example": op.answer}}},
    }
    if op.body is not None or op.query:
        responses["400"] = {
            "description": "a bad request; the answer names the field",
            "content": {"application/json": {"schema": _ERROR}},
        }
    if not op.public:
        responses["401"] = {
            "description": "not a trusted host and no valid Basic auth",
            "content": {"application/json": {"schema": _ERROR}},
        }
    for status, why in sorted(op.errors.items()):
        responses[str(status)] = {
            "description": why,
            "content": {"application/json": {"schema": _ERROR}},
        }
    out["responses"] = responses
    if op.public:
        out["security"] = []
    return out  # fmt: skip


def document(with_admin: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document (admin paths only ``with_admin``)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if op.admin and not with_admin:
            continue
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kumoq",
            "version": __version__,
            "description": "kumoq's HTTP API: KumoMTA's injection and admin endpoints, plus "
            "kumoq's own for per-message control and dead letters. Every error is JSON "
            '{"error": "...", "field": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                }
            },
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
        "security": [{"basic": []}],
    }


def routes(with_admin: bool = True) -> list[Route]:
    body = document(with_admin)

    async def openapi_json(request: web.Request, auth: AuthInfo) -> web.Response:
        return web.json_response(body)

    return [Route("GET", PATH, openapi_json)]
