"""One MTA's admin answers from the answers of its workers (``kumoq serve --workers N``).

Each function takes the ``Reply`` of every worker that answered (the receiving worker's first)
and returns the merged ``(status, document)``. docs/operations.md ("Several processes per
box") says what each endpoint shows:

- ``merge_counts``: an action applied everywhere (rebind, retry, delete-message, dead-letters
  requeue and purge, making or cancelling a rule). The workers that succeeded are added up:
  numbers summed, objects of numbers (bounce's ``bounced`` by queue) summed key by key, a flag
  true when any worker says so, any other value (a rule's ``id``) the first worker's.
- ``merge_first``: one message by id (inspect-message, dead-letter): the answer of the worker
  that has it.
- ``merge_rules``: the rule lists, each rule once by ``id`` (its counters summed).
- ``merge_campaigns``: campaign-progress, one row per campaign and tenant, counts summed.
- ``merge_sched_q``, ``merge_ready_q_states``: a queue as the sum of its shares.
- ``merge_page`` with ``page_queries``: queue-messages and dead-letters, paged with a cursor
  that holds each worker's own cursor (``encode_cursor``).

When no worker succeeded the answer is the most telling failure: anything but a 404 (a 409
"being delivered now", a 400) before a 404, which then means that no worker knew the thing.

Pure: JSON in, JSON out. Imports nothing of kumoq.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CURSOR_PREFIX",
    "Merged",
    "Reply",
    "decode_cursor",
    "encode_cursor",
    "merge_campaigns",
    "merge_counts",
    "merge_first",
    "merge_page",
    "merge_ready_q_states",
    "merge_rules",
    "merge_sched_q",
    "page_queries",
]

#: The merged cursor of a paged endpoint starts with this (a worker's own cursor never does).
CURSOR_PREFIX: Final = "w."
#: inspect-sched-q's most messages when ``limit`` is not given (kumoq.admin.service's bound).
INSPECT_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer: its index, HTTP status and JSON document."""

    worker: int
    status: int
    document: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Merged = tuple[int, Any]


def _failure(replies: Sequence[Reply]) -> Merged:
    """The answer when no worker succeeded: a failure other than 404 first."""
    for reply in replies:
        if reply.status != 404:
            return reply.status, reply.document
    return replies[0].status, replies[0].document


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def add_documents(a: Any, b: Any) -> Any:
    """``a`` and ``b`` added (see ``merge_counts``)."""
    if _is_number(a) and _is_number(b):
        return a + b
    if isinstance(a, bool) and isinstance(b, bool):
        return a or b
    if isinstance(a, dict) and isinstance(b, dict):
        merged = dict(a)
        for key, value in b.items():
            merged[key] = add_documents(merged[key], value) if key in merged else value
        return merged
    return b if a is None else a


def merge_counts(replies: Sequence[Reply]) -> Merged:
    """An action applied on every worker: the successes added up."""
    good = [r for r in replies if r.ok]
    if not good:
        return _failure(replies)
    document = good[0].document
    for reply in good[1:]:
        document = add_documents(document, reply.document)
    return good[0].status, document


def merge_first(replies: Sequence[Reply]) -> Merged:
    """The first worker that has it; 404 only when none has."""
    for reply in replies:
        if reply.ok:
            return reply.status, reply.document
    return _failure(replies)


def _merge_by(replies: Sequence[Reply], key: Callable[[dict[str, Any]], Any]) -> Merged:
    good = [r for r in replies if r.ok and isinstance(r.document, list)]
    if not good:
        return _failure(replies)
    rows: dict[Any, dict[str, Any]] = {}
    for reply in good:
        for row in reply.document:
            if not isinstance(row, dict):
                continue
            k = key(row)
            rows[k] = add_documents(rows[k], row) if k in rows else dict(row)
    return 200, list(rows.values())


def merge_rules(replies: Sequence[Reply]) -> Merged:
    """A rule list (bounce, suspend, suspend-ready-q): each rule once, by id; its counters
    (bounce's ``bounced``, ``total_bounced``) summed over the workers."""
    return _merge_by(replies, lambda row: row.get("id"))


def merge_campaigns(replies: Sequence[Reply]) -> Merged:
    """campaign-progress: one row per campaign and tenant, every count summed."""
    return _merge_by(replies, lambda row: (row.get("campaign"), row.get("tenant")))


def _due(message: Any) -> str:
    inner = message.get("message") if isinstance(message, dict) else None
    due = inner.get("due") if isinstance(inner, dict) else None
    return due if isinstance(due, str) else ""


def merge_sched_q(replies: Sequence[Reply], limit: int | None) -> Merged:
    """inspect-sched-q: the queue's counts summed, its messages from every worker in due order
    (those due now first), at most ``limit``; the configuration is the first worker's."""
    good = [r for r in replies if r.ok and isinstance(r.document, dict)]
    if not good:
        return _failure(replies)
    document = dict(good[0].document)
    messages: list[Any] = []
    for reply in good:
        messages += reply.document.get("messages", [])
    for key in ("delayed_metric", "num_scheduled"):
        document[key] = sum(r.document.get(key, 0) for r in good)
    messages.sort(key=_due)
    document["messages"] = messages[: INSPECT_LIMIT if limit is None else limit]
    return 200, document


def merge_ready_q_states(replies: Sequence[Reply]) -> Merged:
    """ready-q-states: every ready queue any worker reports. A suspension is one rule (the
    first worker's); connection failures are each worker's own, joined naming the worker."""
    good = [r for r in replies if r.ok and isinstance(r.document, dict)]
    if not good:
        return _failure(replies)
    states: dict[str, dict[str, Any]] = {}
    for reply in good:
        for name, state in reply.document.get("states_by_ready_queue", {}).items():
            into = states.setdefault(name, {})
            for kind, value in state.items():
                if kind == "connection_failures" and isinstance(value, dict):
                    text = f"worker {reply.worker}: {value.get('context', '')}"
                    if kind in into:
                        text = f"{into[kind]['context']}; {text}"
                    into[kind] = {**value, "context": text}
                else:
                    into.setdefault(kind, value)
    return 200, {"states_by_ready_queue": states}


# -- paging: queue-messages and dead-letters ---------------------------------------------------


def encode_cursor(cursors: Mapping[int, str]) -> str:
    """The merged cursor: each worker still to be read, with its own cursor (``""``: from
    its start)."""
    text = json.dumps({str(k): v for k, v in sorted(cursors.items())}, separators=(",", ":"))
    return CURSOR_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[int, str]:
    """The workers' cursors in ``cursor``; raises ValueError when it is not a merged cursor."""
    if not cursor.startswith(CURSOR_PREFIX):
        raise ValueError(f"cursor {cursor!r} is not a next_cursor of this endpoint")
    body = cursor[len(CURSOR_PREFIX) :]
    try:
        raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        out = {int(k): str(v) for k, v in raw.items()}
    except (binascii.Error, ValueError, TypeError, AttributeError):
        raise ValueError(f"cursor {cursor!r} is not a next_cursor of this endpoint") from None
    return out


def _reading(query: Mapping[str, str]) -> dict[int, str] | None:
    """Which workers this page reads (with their cursors); None: all, from the start."""
    cursor = query.get("cursor")
    return None if cursor is None else decode_cursor(cursor)


def page_queries(query: Mapping[str, str], workers: Sequence[int]) -> dict[int, dict[str, str]]:
    """What to ask each of ``workers`` for one page: a worker still being read gets its own
    cursor; one already read to its end is asked one message (for the counts; discarded).
    Raises ValueError for a cursor that is not a merged cursor."""
    reading = _reading(query)
    out: dict[int, dict[str, str]] = {}
    for worker in workers:
        asked = {k: v for k, v in query.items() if k != "cursor"}
        if reading is None or worker in reading:
            if reading is not None and reading[worker]:
                asked["cursor"] = reading[worker]
        else:
            asked["limit"] = "1"
        out[worker] = asked
    return out


def merge_page(
    replies: Sequence[Reply], query: Mapping[str, str], list_key: str, count_key: str
) -> Merged:
    """One page of queue-messages (``messages``, ``num_scheduled``) or dead-letters
    (``messages``, ``total``): the messages of each worker still being read, worker by worker
    (so up to ``limit`` from each), the counts summed over every worker, and a ``next_cursor``
    naming the workers with more (None when none has). A worker that fails or no longer knows
    the queue leaves the paging."""
    good = [r for r in replies if r.ok and isinstance(r.document, dict)]
    if not good:
        return _failure(replies)
    reading = _reading(query)
    document = dict(good[0].document)
    document[count_key] = sum(r.document.get(count_key, 0) for r in good)
    messages: list[Any] = []
    more: dict[int, str] = {}
    for reply in sorted(good, key=lambda r: r.worker):
        if reading is not None and reply.worker not in reading:
            continue
        messages += reply.document.get(list_key, [])
        if reply.document.get("next_cursor"):
            more[reply.worker] = str(reply.document["next_cursor"])
    document[list_key] = messages
    document["next_cursor"] = encode_cursor(more) if more else None
    return 200, document
