"""The forecast of a simulation, for a person: ``format_text`` and ``render_html``.

Both read the JSON-ready forecast ``kumoq.simulate.engine.simulate`` returns (what
``kumoq simulate --json`` prints): the totals, when the backlog cleared, deliveries per bucket
of virtual time per domain and per egress source, the retry load (attempts and transient
failures per bucket), the queue depth over time, what each destination saw, and why messages
were delayed. The page is self-contained, as the harness report is, and draws its plots with
the harness's ``line_chart`` (kumoq.testing.harness_report), so the two read alike.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from kumoq.testing.harness_report import line_chart

__all__ = ["format_text", "render_html", "span", "write_html"]

_DESTINATION_COLUMNS: Final = (
    ("sessions", "sessions"),
    ("refused_busy", "421 busy"),
    ("refused_window", "421 window"),
    ("unreachable", "unreachable"),
    ("peak_sessions", "peak"),
    ("accepted", "accepted"),
    ("tempfailed", "tempfailed"),
    ("permfailed", "permfailed"),
    ("hung_up_after_limit", "hung up"),
)
_BUCKET_COLUMNS: Final = (
    "injected", "delivered", "transient_failures", "bounced", "expired", "attempts", "delayed",
)  # fmt: skip
_MAX_SERIES: Final = 7


def span(seconds: float | None) -> str:
    """``2d 3h 10m``, ``4m 12s``, ``0.35s``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.0f}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return " ".join(parts[:2])


def _n(value: int | float) -> str:
    return f"{value:,}"


def _used_buckets(forecast: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The buckets the run reached (it may end early, when every message is final)."""
    ended = forecast["run"]["virtual_seconds"]
    buckets: list[Mapping[str, Any]] = forecast["buckets"]
    used = [b for b in buckets if b["start"] < ended or b is buckets[0]]
    return used


def _summary(forecast: Mapping[str, Any]) -> list[str]:
    run, totals, scenario = forecast["run"], forecast["totals"], forecast["scenario"]
    speed = f"{run['speedup']:,}x real time" if run["speedup"] else "-"
    cleared = forecast["backlog_cleared_at"]
    lines = [
        f"{_n(scenario['messages'])} messages over {span(scenario['duration'])} of virtual "
        f"time; ran {span(run['virtual_seconds'])} of it in {run['real_seconds']:.1f} s "
        f"({speed})",
        f"delivered {_n(totals['delivered'])}, bounced {_n(totals['bounced'])}, expired "
        f"{_n(totals['expired'])}, still queued {_n(totals['pending'])} (refused by the "
        f"policy {_n(totals['rejected'])}, null queue {_n(totals['discarded'])})",
        f"backlog cleared after {span(cleared)}"
        if cleared is not None
        else f"backlog not cleared: {_n(totals['pending'])} messages still queued at the end",
        f"retry load: {_n(totals['attempts'])} attempts, {_n(totals['transient_failures'])} "
        f"transient failures; messages delayed {_n(totals['delayed'])} times (throttles, "
        "full ready queues)",
    ]
    latency = forecast["time_to_deliver"]
    lines.append(
        "time from injection to delivery: "
        + ", ".join(f"{k} {span(latency[k])}" for k in ("p50", "p90", "p99", "max"))
    )
    return lines


def _text_table(headings: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(h) for h in headings]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    return [
        "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in cells
    ]  # fmt: skip


def _label(start: float, end: float) -> str:
    return f"{span(start) if start else '0'}-{span(end)}"


def _rows(
    size: float, rows: Sequence[tuple[float, Sequence[int], Sequence[object]]]
) -> list[list[object]]:
    """Table rows ``(bucket start, counts, more cells)``; consecutive buckets in which every
    count is 0 share one row."""
    out: list[list[object]] = []
    quiet_from: float | None = None
    for start, counts, more in rows:
        if not any(counts) and out:
            if quiet_from is None:
                quiet_from = start
                out.append([])
            out[-1] = [_label(quiet_from, start + size), *(_n(c) for c in counts), *more]
            continue
        quiet_from = None
        out.append([_label(start, start + size), *(_n(c) for c in counts), *more])
    return out


def _bucket_rows(forecast: Mapping[str, Any]) -> tuple[list[str], list[list[object]]]:
    size = forecast["bucket_seconds"]
    samples = forecast["depth"]
    rows: list[tuple[float, Sequence[int], Sequence[object]]] = []
    for bucket in _used_buckets(forecast):
        end = bucket["start"] + size
        depth = [s["pending"] for s in samples if s["at"] <= end]
        counts = [bucket[c] for c in _BUCKET_COLUMNS]
        rows.append((bucket["start"], counts, [_n(depth[-1]) if depth else "-"]))
    headings = ["time", *(c.replace("_", " ") for c in _BUCKET_COLUMNS), "queued at end"]
    return headings, _rows(size, rows)


def _series_rows(
    forecast: Mapping[str, Any], table: Mapping[str, Sequence[int]]
) -> tuple[list[str], list[list[object]]]:
    size = forecast["bucket_seconds"]
    names = sorted(table, key=lambda n: -sum(table[n]))
    rows = [
        (bucket["start"], [table[n][i] for n in names], ())
        for i, bucket in enumerate(_used_buckets(forecast))
    ]
    return ["time", *names], _rows(size, rows)


def _destination_rows(forecast: Mapping[str, Any]) -> tuple[list[str], list[list[object]]]:
    rows = [
        [name, *(_n(stats[key]) for key, _ in _DESTINATION_COLUMNS)]
        for name, stats in forecast["destinations"].items()
    ]
    return ["destination", *(label for _, label in _DESTINATION_COLUMNS)], rows


def _sections(forecast: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[object]]]]:
    """Every table of the report: ``(title, headings, rows)``."""
    size = span(forecast["bucket_seconds"])
    sections = [
        (f"per {size} of virtual time", *_bucket_rows(forecast)),
        (f"deliveries per {size}, by domain",
         *_series_rows(forecast, forecast["delivered_by_domain"])),
        (f"deliveries per {size}, by egress source",
         *_series_rows(forecast, forecast["delivered_by_source"])),
        (f"transient failures per {size}, by domain",
         *_series_rows(forecast, forecast["transient_failures_by_domain"])),
        ("what each destination saw", *_destination_rows(forecast)),
    ]  # fmt: skip
    for title, key, heading in (
        ("why messages were delayed (Delayed records, by context)", "delayed_reasons", "context"),
        ("transient failures, most frequent responses", "transient_responses", "response"),
        ("refused by the policy at reception", "rejections", "reason"),
        ("deliveries by ready queue", "ready_queues", "ready queue"),
    ):
        counts: Mapping[str, int] = forecast[key]
        if counts:
            sections.append((title, [heading, "count"], [[k, _n(v)] for k, v in counts.items()]))
    return sections


def format_text(forecast: Mapping[str, Any]) -> str:
    """The forecast as ``kumoq simulate`` prints it."""
    lines = [f"kumoq simulate: policy {forecast['policy']}", *_summary(forecast)]
    for title, headings, rows in _sections(forecast):
        lines += ["", title, *_text_table(headings, rows)]
    lines += [f"warning: {w}" for w in forecast["warnings"]]
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------

_CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
svg.plot { border: 1px solid #ddd; background: #fff; }
svg .axis { stroke: #444; } svg .grid { stroke: #eee; } svg text { font-size: 11px; }
svg .series { fill: none; stroke-width: 1.5; }
"""


def _html_table(headings: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _per_hour(
    forecast: Mapping[str, Any], table: Mapping[str, Sequence[int]]
) -> list[tuple[str, list[tuple[float, float]]]]:
    """The busiest ``_MAX_SERIES`` series of ``table`` as points ``(hours, count)``."""
    size = forecast["bucket_seconds"]
    used = len(_used_buckets(forecast))
    names = sorted(table, key=lambda n: -sum(table[n]))[:_MAX_SERIES]
    return [
        (name, [(i * size / 3600, float(table[name][i])) for i in range(used)]) for name in names
    ]


def _charts(forecast: Mapping[str, Any]) -> list[str]:
    size = span(forecast["bucket_seconds"])
    x_label = "hours of virtual time"
    x_end = forecast["run"]["virtual_seconds"] / 3600
    buckets = _used_buckets(forecast)
    load = [
        (label, [(b["start"] / 3600, float(b[key])) for b in buckets])
        for key, label in (("attempts", "attempts"), ("transient_failures", "transient failures"),
                           ("delivered", "delivered"))
    ]  # fmt: skip
    depth = [
        (label, [(s["at"] / 3600, float(s[key])) for s in forecast["depth"]])
        for key, label in (("pending", "not yet final"), ("scheduled", "scheduled queues"),
                           ("ready", "ready queues"))
    ]  # fmt: skip
    per = f"per {size}"
    return [
        f"<h2>Deliveries {per}, by domain</h2>",
        line_chart("by-domain", x_label, f"deliveries {per}",
                   _per_hour(forecast, forecast["delivered_by_domain"]), x_end),
        f"<h2>Deliveries {per}, by egress source</h2>",
        line_chart("by-source", x_label, f"deliveries {per}",
                   _per_hour(forecast, forecast["delivered_by_source"]), x_end),
        f"<h2>Retry load {per}</h2>",
        line_chart("retry-load", x_label, f"messages {per}", load, x_end),
        "<h2>Queue depth</h2>",
        line_chart("depth", x_label, "messages waiting", depth, x_end),
    ]  # fmt: skip


def render_html(forecast: Mapping[str, Any]) -> str:
    """The forecast as one self-contained HTML page: the summary, four plots, the tables."""
    esc = html.escape
    title = f"kumoq simulate: {forecast['policy']}"
    body = [f"<h1>{esc(title)}</h1>", "<ul>"]
    body += [f"<li>{esc(line)}</li>" for line in _summary(forecast)]
    body += [f"<li><strong>warning:</strong> {esc(w)}</li>" for w in forecast["warnings"]]
    body.append("</ul>")
    body += _charts(forecast)
    for heading, headings, rows in _sections(forecast):
        body += [f"<h2>{esc(heading[:1].upper() + heading[1:])}</h2>", _html_table(headings, rows)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_html(forecast: Mapping[str, Any], path: Path) -> None:
    path.write_text(render_html(forecast), encoding="utf-8")
