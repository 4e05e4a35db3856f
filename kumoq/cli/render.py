"""How the admin commands print for a person: aligned tables, times with how far off they are,
remaining durations, and the one sentence that says why a message is waiting.

``--json`` bypasses all of this: the commands print the server's JSON as it came. Imports
nothing from kumoq.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "ago",
    "count",
    "emit",
    "fields",
    "humantime",
    "natural_key",
    "table",
    "timestamp",
    "waiting_sentence",
]

#: One column: its heading and whether numbers align right (``">"``) or text left (``"<"``).
Column = tuple[str, str]


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """``data`` as indented JSON when ``as_json``, else through ``human``."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        human(data)


def table(
    columns: Sequence[Column], rows: Iterable[Sequence[Any]], *, out: TextIO | None = None
) -> None:
    """Print ``rows`` under ``columns``, two spaces between columns, trailing space stripped."""
    text_rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(name) for name, _ in columns]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    stream = out or sys.stdout
    for row in [[name for name, _ in columns], *text_rows]:
        cells = [
            cell.rjust(width) if align == ">" else cell.ljust(width)
            for cell, width, (_, align) in zip(row, widths, columns, strict=True)
        ]
        print("  ".join(cells).rstrip(), file=stream)


def fields(pairs: Iterable[tuple[str, Any]], *, out: TextIO | None = None) -> None:
    """``name: value`` lines with the values aligned; None values are left out."""
    shown = [(name, value) for name, value in pairs if value is not None]
    width = max((len(name) for name, _ in shown), default=0) + 1
    for name, value in shown:
        text = value if isinstance(value, str) else json.dumps(value)
        print(f"{(name + ':').ljust(width)} {text}", file=out or sys.stdout)


def count(value: Any) -> str:
    """An integer with thousands separators, as kcli prints counts (``1,234``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{int(value):,}"


def humantime(seconds: float) -> str:
    """``4m 59s``, ``2h``, ``3d 1h``: whole seconds, largest unit first."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts) or "0s"


def _unix(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return None


def timestamp(value: Any) -> str:
    """An RFC 3339 UTC time from unix seconds or a time text; other values as they are."""
    unix = _unix(value)
    if unix is None:
        return "" if value is None else str(value)
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(value: Any, now: float | None = None) -> str:
    """``timestamp(value)`` and how far it is from now: ``(in 4m 10s)``, ``(2m ago)``."""
    unix = _unix(value)
    if unix is None:
        return timestamp(value)
    delta = unix - (time.time() if now is None else now)
    if abs(delta) < 1:
        return f"{timestamp(value)} (now)"
    rel = f"in {humantime(delta)}" if delta > 0 else f"{humantime(-delta)} ago"
    return f"{timestamp(value)} ({rel})"


#: How each ``waiting.reason`` (the message's state) reads in a sentence.
_STATES = {
    "scheduled": "waiting for its next attempt",
    "waiting": "waiting",
    "rate_throttled": "held by its queue's rate limit",
    "in_flight": "being delivered now",
    "policy_failed": "waiting for its queue's configuration",
    "dns_wait": "waiting for DNS",
    "ready": "ready, waiting for a connection",
    "dead_letter": "a dead letter",
}


def waiting_sentence(answer: Mapping[str, Any], now: float | None = None) -> str:
    """Why the message of an inspect-message answer waits, as one sentence:
    ``Message <id> in <queue> is waiting for its next attempt: <detail>.``"""
    waiting = answer.get("waiting")
    msg_id = answer.get("id", "?")
    queue = answer.get("queue")
    where = f" in {queue}" if queue else ""
    if not isinstance(waiting, Mapping):
        state = str(answer.get("state") or "not waiting")
        return f"Message {msg_id}{where} is {_STATES.get(state, state.replace('_', ' '))}."
    reason = str(waiting.get("reason") or answer.get("state") or "waiting")
    sentence = f"Message {msg_id}{where} is {_STATES.get(reason, reason.replace('_', ' '))}"
    detail = str(waiting.get("detail") or "").strip().rstrip(".")
    if detail:
        sentence += f": {detail}"
    until = waiting.get("until")
    if until not in (None, "") and timestamp(until) not in sentence and str(until) not in sentence:
        sentence += f", until {ago(until, now)}"
    return sentence + "."


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``q2`` before ``q10`` (kcli's natural lexical order)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]
