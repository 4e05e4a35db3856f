"""The admin API's requests as data: each body and query string is a tuple of ``Field``s, and one
parser checks a request against it (reference §6.1; KumoMTA's ``kumo-api-types``).

A field has a name, a ``Kind`` (how the value is spelled and checked), whether it is required,
and a line of documentation; kumoq.http.openapi turns the same tuples into the OpenAPI
document, so the served description cannot drift from what the routes accept.

``parse_body(document, fields, now)`` and ``parse_query(query, fields)`` return the values
present, converted (durations to seconds, ``expires`` to unix seconds, spool ids to their
32-hex form), and raise ``ApiError(400)`` naming the field for: a body that is not a JSON
object, an unknown key (the message lists the allowed ones), a missing required key, a value
of the wrong type, a duration or timestamp that does not parse, a boolean or integer query
parameter that does not parse or is out of range, and a query parameter given twice.

Imports kumoq.http.errors, kumoq.config.values, kumoq.scheduler.admin_rules and kumoq.errors;
must not import the other kumoq.http modules.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

from kumoq.config.values import parse_duration
from kumoq.errors import ConfigError
from kumoq.http.errors import ApiError
from kumoq.scheduler.admin_rules import DEFAULT_RULE_DURATION

__all__ = [
    "BOUNCE",
    "CAMPAIGN_PROGRESS",
    "CANCEL",
    "CRITERIA_KEYS",
    "DEAD_LETTER",
    "DEAD_LETTERS",
    "DEAD_LETTER_SELECT",
    "DEFAULT_PAGE",
    "DELETE_MESSAGE",
    "INSPECT_MESSAGE",
    "INSPECT_SCHED_Q",
    "MAX_PAGE",
    "QUEUE_MESSAGES",
    "READY_Q_STATES",
    "REBIND",
    "RETRY",
    "SUSPEND",
    "SUSPEND_READY_Q",
    "Field",
    "Kind",
    "parse_body",
    "parse_query",
    "rule_duration",
]

#: The most messages one page of queue-messages or dead-letters holds.
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100
CRITERIA_KEYS: Final = ("domain", "routing_domain", "campaign", "tenant", "queue_names")


class Kind(Enum):
    """How a field is spelled (kumoq.http.openapi maps each kind to its JSON schema)."""

    TEXT = "string"
    NULLABLE_TEXT = "string or null"
    TEXT_LIST = "array of strings"
    FLAG = "boolean"
    DURATION = "humantime duration"
    TIMESTAMP = "RFC 3339 time"
    TEXT_MAP = "object of strings"
    RULE_ID = "rule id (UUID)"
    SPOOL_ID = "spool id"
    SPOOL_ID_LIST = "array of spool ids"
    # query parameters only
    QUERY_FLAG = "boolean parameter"
    QUERY_COUNT = "count parameter"
    QUERY_PAGE = "page size parameter"
    QUERY_TEXT_LIST = "list parameter"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    doc: str
    required: bool = False


def _criteria(routing_domain: bool = True) -> tuple[Field, ...]:
    fields = [
        Field("domain", Kind.NULLABLE_TEXT, "the domain to match; omitted: any domain"),
        Field("campaign", Kind.NULLABLE_TEXT, "the campaign to match; omitted: any campaign"),
        Field("tenant", Kind.NULLABLE_TEXT, "the tenant to match; omitted: any tenant"),
        Field("queue_names", Kind.TEXT_LIST,
              "exact scheduled queue names; takes precedence over the other criteria"),
    ]  # fmt: skip
    if routing_domain:
        fields.insert(1, Field("routing_domain", Kind.NULLABLE_TEXT,
                               "the routing domain to match; omitted: any"))  # fmt: skip
    return tuple(fields)


_REASON = Field("reason", Kind.TEXT, "the reason, logged and shown in the list", required=True)
_DURATION = Field("duration", Kind.DURATION, "how long the rule stays in effect; default 5m")
_EXPIRES = Field("expires", Kind.TIMESTAMP, "RFC 3339 time the rule ends; instead of duration")

BOUNCE: Final = (
    _REASON, *_criteria(), _DURATION, _EXPIRES,
    Field("suppress_logging", Kind.FLAG, "log no AdminBounce record for the bounced messages"),
)  # fmt: skip
SUSPEND: Final = (_REASON, *_criteria(routing_domain=False), _DURATION, _EXPIRES)
SUSPEND_READY_Q: Final = (
    Field("name", Kind.TEXT, "the ready queue's name", required=True),
    _REASON, _DURATION, _EXPIRES,
)  # fmt: skip
REBIND: Final = (
    _REASON,
    Field("data", Kind.TEXT_MAP, "meta to set, or handed to the rebind_message event",
          required=True),
    *_criteria()[:4],
    Field("always_flush", Kind.FLAG, "make every matched message due now, moved or not"),
    Field("suppress_logging", Kind.FLAG, "log no AdminRebind record"),
    Field("trigger_rebind_event", Kind.FLAG, "call rebind_message(msg, data) for each message"),
)  # fmt: skip
CANCEL: Final = (Field("id", Kind.RULE_ID, "the rule's id", required=True),)
RETRY: Final = (
    Field("id", Kind.SPOOL_ID, "one message's spool id"),
    Field("queue_name", Kind.TEXT, "every message of this scheduled queue"),
    *_criteria(),
    Field("everything", Kind.FLAG, "every message of every scheduled queue"),
)
DELETE_MESSAGE: Final = (
    Field("id", Kind.SPOOL_ID, "the message's spool id", required=True),
    Field("reason", Kind.TEXT, "logged in the AdminBounce record"),
)
DEAD_LETTER_SELECT: Final = (
    Field("ids", Kind.SPOOL_ID_LIST, "these dead letters"),
    Field("queue_name", Kind.TEXT, "the dead letters of this scheduled queue"),
    Field("everything", Kind.FLAG, "every dead letter"),
)

INSPECT_SCHED_Q: Final = (
    Field("queue_name", Kind.TEXT, "the scheduled queue", required=True),
    Field("want_body", Kind.QUERY_FLAG, "include each message's text"),
    Field("limit", Kind.QUERY_COUNT, "at most this many messages; omitted: all"),
)
INSPECT_MESSAGE: Final = (
    Field("id", Kind.SPOOL_ID, "the message's spool id", required=True),
    Field("want_body", Kind.QUERY_FLAG, "include the message's text"),
)
READY_Q_STATES: Final = (
    Field("queues", Kind.QUERY_TEXT_LIST, "ready queue names; omitted: every ready queue"),
)
_CURSOR = Field("cursor", Kind.TEXT, "the next_cursor of the previous page")
_PAGE = Field("limit", Kind.QUERY_PAGE, f"messages per page, 1 to {MAX_PAGE}")
QUEUE_MESSAGES: Final = (
    Field("queue_name", Kind.TEXT, "the scheduled queue", required=True),
    _CURSOR,
    _PAGE,
)
CAMPAIGN_PROGRESS: Final = (
    Field("campaign", Kind.TEXT, "only this campaign"),
    Field("tenant", Kind.TEXT, "only this tenant"),
)
DEAD_LETTERS: Final = (
    Field("queue_name", Kind.TEXT, "only the dead letters of this scheduled queue"),
    _CURSOR,
    _PAGE,
)
DEAD_LETTER: Final = (
    Field("id", Kind.SPOOL_ID, "the dead letter's spool id", required=True),
    Field("want_body", Kind.QUERY_FLAG, "include the message's text"),
)


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, f"{name}: {message}", field=name)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip


def _spool_id(name: str, value: Any) -> str:
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip()).hex
        except ValueError:
            pass
    raise _bad(name, f"expected a spool id (32 hex digits), got {value!r}")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(name, f"expected a string, got {_type_name(value)}")
    return value


def _convert(name: str, kind: Kind, value: Any, now: float) -> Any:
    match kind:
        case Kind.TEXT:
            return _text(name, value)
        case Kind.NULLABLE_TEXT:
            return None if value is None else _text(name, value)
        case Kind.TEXT_LIST:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad(name, f"expected an array of strings, got {value!r}")
            return tuple(value)
        case Kind.FLAG:
            if not isinstance(value, bool):
                raise _bad(name, f"expected true or false, got {_type_name(value)}")
            return value
        case Kind.DURATION:
            if value is None:
                return None
            try:
                return parse_duration(name, value)
            except ConfigError as exc:
                raise ApiError(400, str(exc), field=name) from None
        case Kind.TIMESTAMP:
            return None if value is None else _timestamp(name, value) - now
        case Kind.TEXT_MAP:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise _bad(name, f"expected an object of string values, got {value!r}")
            return dict(value)
        case Kind.RULE_ID:
            try:
                return str(uuid.UUID(_text(name, value)))
            except ValueError:
                raise _bad(name, f"expected a rule id (a UUID), got {value!r}") from None
        case Kind.SPOOL_ID:
            return _spool_id(name, value)
        case Kind.SPOOL_ID_LIST:
            if not isinstance(value, list) or not value:
                raise _bad(name, f"expected a non-empty array of spool ids, got {value!r}")
            return [_spool_id(name, v) for v in value]
    raise AssertionError(kind)  # pragma: no cover - a body field of a query kind


def _timestamp(name: str, value: Any) -> float:
    text = _text(name, value)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(name, f"expected an RFC 3339 time such as "
                         f"'2030-01-31T12:00:00Z', got {text!r}") from None  # fmt: skip
    if when.tzinfo is None:
        raise _bad(name, f"the time {text!r} needs a zone offset, such as Z or +02:00")
    return when.timestamp()


def _allowed(fields: tuple[Field, ...]) -> str:
    return ", ".join(sorted(f.name for f in fields))


def parse_body(document: Any, fields: tuple[Field, ...], now: float) -> dict[str, Any]:
    """The fields ``document`` carries, converted; ``expires`` becomes the seconds from ``now``
    to that time. Raises ApiError(400) naming the field (see the module docstring)."""
    if not isinstance(document, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(document)}")
    known = {f.name: f for f in fields}
    for key in document:
        if key not in known:
            raise ApiError(400, f"unknown field {key!r}; allowed: {_allowed(fields)}", field=key)
    out: dict[str, Any] = {}
    for f in fields:
        if f.name in document:
            out[f.name] = _convert(f.name, f.kind, document[f.name], now)
        elif f.required:
            raise ApiError(400, f"missing field {f.name!r}", field=f.name)
    return out


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})


def _query_value(name: str, kind: Kind, values: list[str]) -> Any:
    if kind is Kind.QUERY_TEXT_LIST:
        return [part.strip() for v in values for part in v.split(",") if part.strip()]
    if len(values) > 1:
        raise _bad(name, "given more than once")
    (text,) = values
    match kind:
        case Kind.QUERY_FLAG:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise _bad(name, f"expected true or false, got {text!r}")
        case Kind.QUERY_COUNT | Kind.QUERY_PAGE:
            try:
                number = int(text)
            except ValueError:
                raise _bad(name, f"expected a whole number, got {text!r}") from None
            low = 1 if kind is Kind.QUERY_PAGE else 0
            if number < low or (kind is Kind.QUERY_PAGE and number > MAX_PAGE):
                top = f" to {MAX_PAGE}" if kind is Kind.QUERY_PAGE else " or more"
                raise _bad(name, f"expected {low}{top}, got {number}")
            return number
        case Kind.SPOOL_ID:
            return _spool_id(name, text)
    return text


def parse_query(query: Mapping[str, str], fields: tuple[Field, ...]) -> dict[str, Any]:
    """The query parameters, converted; defaults filled in for flags and page sizes. ``query``
    is aiohttp's MultiDict (``getall`` gives a parameter's every value)."""
    known = {f.name: f for f in fields}
    for key in query:
        if key not in known:
            raise ApiError(
                400, f"unknown query parameter {key!r}; allowed: {_allowed(fields)}", field=key
            )
    out: dict[str, Any] = {}
    getall = getattr(query, "getall", None)
    for f in fields:
        if f.name in query:
            values = list(getall(f.name)) if getall is not None else [query[f.name]]
            out[f.name] = _query_value(f.name, f.kind, values)
        elif f.required:
            raise ApiError(400, f"missing query parameter {f.name!r}", field=f.name)
        elif f.kind is Kind.QUERY_FLAG:
            out[f.name] = False
        elif f.kind is Kind.QUERY_PAGE:
            out[f.name] = DEFAULT_PAGE
    return out


def rule_duration(parsed: Mapping[str, Any]) -> float:
    """A rule's length in seconds: ``expires`` wins over ``duration`` (as in KumoMTA), a time
    already past gives 0; neither: KumoMTA's default, 5 minutes."""
    remaining = parsed.get("expires")
    if remaining is not None:
        return max(0.0, float(remaining))
    duration = parsed.get("duration")
    return DEFAULT_RULE_DURATION if duration is None else float(duration)
