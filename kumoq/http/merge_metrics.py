"""One MTA's metrics from the answers of its workers (``kumoq serve --workers N``): the
Prometheus text of ``GET /metrics`` and KumoMTA's JSON of ``GET /metrics.json``, merged.

Every worker is a share of one MTA, so a sample with the same name and labels is summed
across the workers, counters and gauges alike: queue sizes, connection counts and totals add
up. KumoMTA's exact names (``total_messages_delivered``, no ``_total``) are kept as the
workers wrote them; a histogram's buckets, count and sum add up (its JSON ``avg`` is computed
again from the sums). A ``_created`` sample (a start time) keeps the earliest. ``# HELP`` and
``# TYPE`` are written once per family, families and samples in the order they first appear.

Pure: text and JSON in, text and JSON out. Imports nothing of kumoq.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["merge_metrics_json", "merge_prometheus_text", "sample_value"]

_LABEL: Final = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class _Family:
    headers: dict[str, str] = field(default_factory=dict)  # "HELP"/"TYPE" -> its line
    samples: dict[_SampleKey, tuple[str, float]] = field(default_factory=dict)  # -> text, value


def _float(text: str) -> float:
    return float({"+Inf": "inf", "-Inf": "-inf", "Inf": "inf"}.get(text, text))


def sample_value(value: float) -> str:
    """A sample's value as prometheus-client writes it (kumoq.http.metrics writes its exact
    counters with this too)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _sample(line: str) -> tuple[str, str, tuple[tuple[str, str], ...], float] | None:
    """``(name, name-and-labels text, sorted labels, value)`` of a sample line; None when the
    line does not parse (it is dropped)."""
    match = _NAME.match(line)
    if match is None:
        return None
    name, rest = match.group(), line[match.end() :]
    labels: list[tuple[str, str]] = []
    if rest.startswith("{"):
        end = 1
        while end < len(rest) and rest[end] != "}":
            label = _LABEL.match(rest, end)
            if label is None:
                return None
            labels.append((label.group(1), label.group(2)))
            end = label.end()
        if end >= len(rest):
            return None
        rest = rest[end + 1 :]
        text = line[: len(line) - len(rest)]
    else:
        text = name
    parts = rest.split()
    if not parts:
        return None
    try:
        value = _float(parts[0])
    except ValueError:
        return None
    return name, text, tuple(sorted(labels)), value


def _add(name: str, old: float, new: float) -> float:
    if name.endswith("_created"):
        return min(old, new)
    return old + new


def merge_prometheus_text(texts: Sequence[bytes]) -> bytes:
    """The Prometheus text (format 0.0.4) of every worker's ``texts``, merged (see the module
    docstring). Timestamps, if any, are dropped."""
    families: dict[str, _Family] = {}
    for raw in texts:
        current: _Family | None = None
        prefix = ""
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                kind, name = line[2:6], line[7:].split(" ", 1)[0]
                current = families.setdefault(name, _Family())
                current.headers.setdefault(kind, line)
                prefix = name
                continue
            if not line.strip() or line.startswith("#"):
                continue
            parsed = _sample(line)
            if parsed is None:
                continue
            name, text, labels, value = parsed
            if current is None or not name.startswith(prefix):
                current, prefix = families.setdefault(name, _Family()), name
            key = (name, labels)
            seen = current.samples.get(key)
            current.samples[key] = (text, value if seen is None else _add(name, seen[1], value))
    out: list[str] = []
    for family in families.values():
        out += [family.headers[k] + "\n" for k in ("HELP", "TYPE") if k in family.headers]
        out += [f"{text} {sample_value(value)}\n" for text, value in family.samples.values()]
    return "".join(out).encode("utf-8")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge_buckets(a: list[Any], b: list[Any]) -> list[Any]:
    bounds: dict[float, float] = {}
    for le, count in [*a, *b]:
        bounds[le] = bounds.get(le, 0.0) + count
    return [[le, bounds[le]] for le in sorted(bounds)]


def _merge_value(a: Any, b: Any) -> Any:
    """Two workers' JSON ``value``s of one family, added."""
    if a is None:
        return b
    if b is None:
        return a
    if _is_number(a) and _is_number(b):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        if "bucket" in a and "count" in a:  # a histogram
            count, total = a.get("count", 0) + b.get("count", 0), a.get("sum", 0) + b.get("sum", 0)
            return {
                "count": count,
                "sum": total,
                "bucket": _merge_buckets(a.get("bucket", []), b.get("bucket", [])),
                "avg": total / count if count else 0.0,
            }
        merged = dict(a)
        for key, value in b.items():
            merged[key] = _merge_value(merged.get(key), value)
        return merged
    if isinstance(a, list) and isinstance(b, list):  # [{label: value, ..., "@": number}]
        points: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
        for point in [*a, *b]:
            if not isinstance(point, dict):
                continue
            key = tuple(sorted((k, str(v)) for k, v in point.items() if k != "@"))
            seen = points.get(key)
            points[key] = dict(point) if seen is None else {
                **seen, "@": _merge_value(seen.get("@"), point.get("@"))
            }  # fmt: skip
        return list(points.values())
    return a


def merge_metrics_json(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """KumoMTA's JSON form (``{name: {help, type, value}}``) of every worker's ``documents``,
    merged: each family's ``value`` added up (see the module docstring)."""
    out: dict[str, Any] = {}
    for document in documents:
        for name, entry in document.items():
            if not isinstance(entry, dict):
                continue
            seen = out.get(name)
            if seen is None:
                out[name] = dict(entry)
            else:
                seen["value"] = _merge_value(seen.get("value"), entry.get("value"))
    return out
