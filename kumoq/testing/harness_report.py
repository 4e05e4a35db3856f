"""The harness run's report: ``format_text`` for the terminal and ``render_html`` for
``kumoq harness --report out.html``.

The page holds the same tables as the text, and two plots drawn as inline SVG: deliveries per
second per ready queue over time (from the ``Delivery`` records), and the queue depth over
time (``scheduled_count_total`` and the ready queues' ``ready_count``, sampled from
``/metrics.json`` during the run). It is self-contained: inline CSS, no script, no image, no
font and nothing fetched from the network, so it opens from a CI artifact as it is. Each plot is
an ``<svg class="plot" id=...>`` with one ``<polyline class="series">`` per series and one
``<circle class="point">`` per data point (``data-x``, ``data-y``), which is what the
headless-browser test looks for.

Imports only the standard library and the sibling harness_run and harness_stats modules.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from kumoq.testing.harness_run import HarnessResult
from kumoq.testing.harness_stats import DelayRow, HarnessStats

__all__ = ["format_text", "line_chart", "render_html", "write_html"]

_TYPE_ORDER: Final = (
    "Reception", "Delivery", "TransientFailure", "Bounce", "Expiration", "AdminBounce",
    "Delayed", "Rejection",
)  # fmt: skip
_COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_WIDTH, _HEIGHT, _PAD = 760, 300, 64
_MAX_POINTS: Final = 2000  # circles per plot; past it only the lines are drawn


def _columns(tables: Iterable[Mapping[str, Mapping[str, int]]]) -> list[str]:
    seen = {kind for table in tables for counts in table.values() for kind in counts}
    return [k for k in _TYPE_ORDER if k in seen] + sorted(seen.difference(_TYPE_ORDER))


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _result_lines(result: HarnessResult) -> list[str]:
    stats, traffic, sink = result.stats, result.traffic, result.sink
    state = "timed out" if result.timed_out else "finished"
    return [
        f"policy {result.policy}: {result.messages} messages, {state} in "
        f"{result.finished_in:.1f} s",
        f"traffic: {traffic['accepted']} accepted, {traffic['tempfailed']} tempfailed, "
        f"{traffic['permfailed']} permfailed, {traffic['errors']} errors over "
        f"{traffic['connections']} {'requests' if traffic['mode'] == 'http' else 'connections'}"
        f" at {traffic['rate']:,.1f} msgs/s",
        f"sink: {sink.get('accepted', 0)} accepted, {sink.get('tempfailed', 0)} tempfailed, "
        f"{sink.get('permfailed', 0)} permfailed in {sink.get('sessions', 0)} sessions "
        f"(at most {sink.get('peak_concurrency', 0)} at once)",
        f"messages: {stats.received} received, {stats.finished} finished, {stats.discarded} "
        f"discarded (null queue), {stats.unfinished} unfinished",
        f"throughput: {stats.counts.get('Delivery', 0)} deliveries in {stats.elapsed:.1f} s, "
        f"{stats.delivered_per_second:,.1f}/s",
        "latency, reception to delivery: " + _latency(stats.latency_ms),
    ]


def _latency(lat: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_ms(lat.get(k, 0.0))}" for k in ("p50", "p90", "p99", "max"))


def _text_table(headings: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(h) for h in headings]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    return [
        "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                         enumerate(zip(row, widths, strict=True))).rstrip()
        for row in cells
    ]  # fmt: skip


def _count_rows(table: Mapping[str, Mapping[str, int]], columns: list[str]) -> list[list[object]]:
    return [[name, *(counts.get(c, 0) for c in columns)] for name, counts in table.items()]


def _delay_rows(delays: Sequence[DelayRow]) -> list[list[object]]:
    return [
        [d.reason, d.where, d.messages, d.delays, f"{d.total_seconds:,.1f} s",
         f"{d.max_seconds:,.1f} s"]
        for d in delays
    ]  # fmt: skip


_DELAY_HEADINGS: Final = ("reason", "where", "messages", "delays", "total delay", "longest")


def format_text(result: HarnessResult) -> str:
    """The report for a person, as ``kumoq harness`` prints it."""
    stats = result.stats
    lines = _result_lines(result)
    lines += ["", "records: " + ", ".join(f"{k} {v}" for k, v in stats.counts.items())]
    for title, table in (
        ("by scheduled queue", stats.by_scheduled_queue),
        ("by ready queue", stats.by_ready_queue),
    ):
        columns = _columns([table])
        if table:
            lines += ["", title, *_text_table([title.split()[-2], *columns],
                                              _count_rows(table, columns))]  # fmt: skip
    if stats.latency_ms_by_ready_queue:
        rows = [[name, *(_ms(lat[k]) for k in ("p50", "p90", "p99", "max"))]
                for name, lat in stats.latency_ms_by_ready_queue.items()]  # fmt: skip
        lines += ["", "latency by ready queue",
                  *_text_table(["ready queue", "p50", "p90", "p99", "max"], rows)]  # fmt: skip
    lines += ["", "delays (Delayed records: throttles and limits)"]
    lines += _text_table(_DELAY_HEADINGS, _delay_rows(stats.delays)) if stats.delays else ["  none"]
    if result.delayed_metrics:
        rows = [[name, queue, f"{n:g}"] for name, by_queue in result.delayed_metrics.items()
                for queue, n in by_queue.items()]  # fmt: skip
        lines += ["", "delayed_due_to_* metrics", *_text_table(["metric", "queue", "count"], rows)]
    if result.expectations:
        lines += ["", "expectations"]
        lines += [f"  {'ok  ' if e['ok'] else 'FAIL'} {e['expect']} (got {e['actual']})"
                  for e in result.expectations]  # fmt: skip
    if result.daemon_errors:
        lines += ["", "daemon errors", *(f"  {line}" for line in result.daemon_errors)]
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------

_CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.fail { color: #b00; font-weight: bold; } .ok { color: #070; }
svg.plot { border: 1px solid #ddd; background: #fff; }
svg .axis { stroke: #444; } svg .grid { stroke: #eee; } svg text { font-size: 11px; }
svg .series { fill: none; stroke-width: 1.5; }
"""


def _table(headings: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _axis(top: float) -> tuple[float, list[float]]:
    """A round axis end at or above ``top`` and its ticks: 4 or 5 steps of 1, 2 or 5 x 10^k."""
    top = max(top, 1.0)
    magnitude = 10 ** math.floor(math.log10(top / 4))
    step = next(m * magnitude for m in (1, 2, 5, 10) if top / (m * magnitude) <= 5)
    end = step * math.ceil(top / step - 1e-9)
    return end, [step * i for i in range(round(end / step) + 1)]


def line_chart(
    chart_id: str,
    x_label: str,
    y_label: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    x_end: float = 0.0,
) -> str:
    """An inline SVG line chart: one polyline and its points per ``(name, [(x, y), ...])``;
    the x axis reaches at least ``x_end``."""
    xs = [x for _, points in series for x, _ in points]
    ys = [y for _, points in series for _, y in points]
    x_top, x_ticks = _axis(max([x_end, *xs]))
    y_top, y_ticks = _axis(max(ys, default=0.0))
    plot_w, plot_h = _WIDTH - 2 * _PAD, _HEIGHT - 2 * _PAD

    def px(x: float) -> float:
        return round(_PAD + plot_w * x / x_top, 1)

    def py(y: float) -> float:
        return round(_HEIGHT - _PAD - plot_h * y / y_top, 1)

    parts = [
        f'<svg class="plot" id="{chart_id}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{_WIDTH}" height="{_HEIGHT + 20 * len(series)}" role="img" '
        f'aria-label="{html.escape(y_label)} by {html.escape(x_label)}">'
    ]
    parts.extend(
        f'<line class="grid" x1="{_PAD}" x2="{_WIDTH - _PAD}" y1="{py(tick)}" y2="{py(tick)}"/>'
        f'<text x="{_PAD - 6}" y="{py(tick) + 4}" text-anchor="end">{tick:,.4g}</text>'
        for tick in y_ticks
    )
    parts.extend(
        f'<text x="{px(tick)}" y="{_HEIGHT - _PAD + 16}" text-anchor="middle">{tick:,.4g}</text>'
        for tick in x_ticks
    )
    parts.append(f'<line class="axis" x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - _PAD}" '
                 f'y2="{_HEIGHT - _PAD}"/><line class="axis" x1="{_PAD}" y1="{_PAD}" '
                 f'x2="{_PAD}" y2="{_HEIGHT - _PAD}"/>')  # fmt: skip
    parts.append(f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 12}" text-anchor="middle">'
                 f"{html.escape(x_label)}</text>")  # fmt: skip
    parts.append(f'<text x="14" y="{_HEIGHT / 2}" transform="rotate(-90 14 {_HEIGHT / 2})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')  # fmt: skip
    budget = _MAX_POINTS
    for i, (name, points) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        label = html.escape(name, quote=True)
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in points)
        parts.append(f'<polyline class="series" data-series="{label}" stroke="{color}" '
                     f'points="{coords}"/>')  # fmt: skip
        if len(points) <= budget:
            budget -= len(points)
            parts.extend(
                f'<circle class="point" data-series="{label}" data-x="{x:g}" data-y="{y:g}" '
                f'cx="{px(x)}" cy="{py(y)}" r="2" fill="{color}"/>'
                for x, y in points
            )
        legend_y = _HEIGHT + 14 + 20 * i
        parts.append(
            f'<rect x="{_PAD}" y="{legend_y - 9}" width="12" height="4" fill="{color}"/>'
            f'<text x="{_PAD + 18}" y="{legend_y}">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _deliveries_chart(stats: HarnessStats, x_end: float) -> str:
    step = stats.bucket_seconds
    series = [
        (name, [(round(i * step, 3), rate) for i, rate in enumerate(rates)])
        for name, rates in stats.deliveries_per_second.items()
    ]
    x_label = f"seconds since the traffic started ({step:g} s buckets)"
    return line_chart("deliveries", x_label, "deliveries per second", series, x_end)


def _depth_chart(samples: Sequence[Sequence[float]], x_end: float) -> str:
    series = [
        ("scheduled (scheduled_count_total)", [(s[0], s[1]) for s in samples]),
        ("ready (ready_count)", [(s[0], s[2]) for s in samples]),
    ]
    x_label = "seconds since the traffic started"
    return line_chart("depth", x_label, "messages waiting", series, x_end)


def render_html(result: HarnessResult) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    stats = result.stats
    esc = html.escape
    body = [f"<h1>kumoq harness: {esc(result.policy)}</h1>", "<ul>"]
    body += [f"<li>{esc(line)}</li>" for line in _result_lines(result)]
    body.append("</ul>")
    if result.expectations:
        body.append("<h2>Expectations</h2><ul>")
        body += [f'<li class="{"ok" if e["ok"] else "fail"}">{"ok" if e["ok"] else "FAIL"} '
                 f'{esc(e["expect"])} (got {esc(str(e["actual"]))})</li>'
                 for e in result.expectations]  # fmt: skip
        body.append("</ul>")
    x_end = max([stats.elapsed, *(s[0] for s in result.depth)])
    body += ["<h2>Deliveries per second, per ready queue</h2>", _deliveries_chart(stats, x_end)]
    body += ["<h2>Queue depth</h2>", _depth_chart(result.depth, x_end)]
    body += ["<h2>Records</h2>", _table(list(stats.counts), [list(stats.counts.values())])]
    for title, table in (
        ("scheduled queue", stats.by_scheduled_queue),
        ("ready queue", stats.by_ready_queue),
    ):
        columns = _columns([table])
        body += [f"<h2>By {title}</h2>", _table([title, *columns], _count_rows(table, columns))]
    rows = [[name, *(_ms(lat[k]) for k in ("p50", "p90", "p99", "max"))]
            for name, lat in stats.latency_ms_by_ready_queue.items()]  # fmt: skip
    body += ["<h2>Latency, reception to delivery</h2>",
             _table(["ready queue", "p50", "p90", "p99", "max"],
                    [["all", *(_ms(stats.latency_ms.get(k, 0.0)) for k in
                               ("p50", "p90", "p99", "max"))], *rows])]  # fmt: skip
    body += ["<h2>Delays: throttles and limits</h2>",
             _table(_DELAY_HEADINGS, _delay_rows(stats.delays)) if stats.delays else
             "<p>No message was delayed.</p>"]  # fmt: skip
    if result.delayed_metrics:
        rows = [[name, queue, f"{n:g}"] for name, by_queue in result.delayed_metrics.items()
                for queue, n in by_queue.items()]  # fmt: skip
        body += ["<h2>delayed_due_to_* metrics</h2>", _table(["metric", "queue", "count"], rows)]
    if result.daemon_errors:
        body += ["<h2>Daemon errors</h2><pre>",
                 esc("\n".join(result.daemon_errors)), "</pre>"]  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>kumoq harness: {esc(result.policy)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_html(result: HarnessResult, path: Path) -> None:
    path.write_text(render_html(result), encoding="utf-8")
