"""``GET /metrics`` (Prometheus text) and ``GET /metrics.json``: everything in
``kumoq.metrics.REGISTRY``.

KumoMTA's counters (``ExactCounter`` families, such as ``total_messages_delivered``) are
written under their own names, ``# TYPE total_messages_delivered counter``, as KumoMTA and kcli
expect; every other family goes through prometheus-client's own exposition unchanged (its
counters end in ``_total``). ``?prefix=`` keeps only the families whose exposed name starts
with it, as KumoMTA's endpoint does.

The JSON form is KumoMTA's: ``{name: {help, type, value}}`` where ``value`` is the number for
a family without labels, ``{label: {label_value: number}}`` for one label, and a list of
``{label: value, ..., "@": number}`` for more; a histogram's number is
``{count, sum, avg, bucket: [[le, cumulative count], ...]}``.

Imports kumoq.http.app, .auth, .merge_metrics (the value format) and kumoq.metrics; must not
import the other route modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kumoq.http.app import Route
from kumoq.http.auth import AuthInfo
from kumoq.http.merge_metrics import sample_value
from kumoq.metrics import REGISTRY, ExactNameFamily

__all__ = ["metrics_json", "prometheus_text", "routes"]


class _Families(Collector):
    """Already collected families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _exposed_name(family: Metric) -> str:
    if family.type == "counter" and not isinstance(family, ExactNameFamily):
        return family.name + "_total"
    return family.name


def _collect(registry: Collector, prefix: str) -> list[Metric]:
    return [f for f in registry.collect() if _exposed_name(f).startswith(prefix)]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _exact_text(family: Metric) -> str:
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {family.name} {doc}\n", f"# TYPE {family.name} {family.type}\n"]
    for sample in family.samples:
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
        labels = f"{{{labels}}}" if labels else ""
        lines.append(f"{sample.name}{labels} {sample_value(sample.value)}\n")
    return "".join(lines)


def prometheus_text(registry: Collector = REGISTRY, prefix: str = "") -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``registry``."""
    families = _collect(registry, prefix)
    standard = [f for f in families if not isinstance(f, ExactNameFamily)]
    exact = "".join(_exact_text(f) for f in families if isinstance(f, ExactNameFamily))
    return generate_latest(_Families(standard)) + exact.encode("utf-8")


def _value(family: Metric) -> Any:
    """KumoMTA's JSON ``value`` of one family."""
    if family.type == "histogram":
        return _histograms(family)
    wanted = family.name + ("_total" if _exposed_name(family) != family.name else "")
    points = [(s.labels, s.value) for s in family.samples if s.name == wanted]
    return _shape(points)


def _histograms(family: Metric) -> Any:
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        entry = series.setdefault(labels, {"count": 0.0, "sum": 0.0, "bucket": []})
        if sample.name == family.name + "_bucket" and sample.labels.get("le") != "+Inf":
            entry["bucket"].append([float(sample.labels["le"]), sample.value])
        elif sample.name == family.name + "_count":
            entry["count"] = sample.value
        elif sample.name == family.name + "_sum":
            entry["sum"] = sample.value
    points = []
    for labels, entry in series.items():
        entry["avg"] = entry["sum"] / entry["count"] if entry["count"] else 0.0
        points.append((dict(labels), entry))
    return _shape(points)


def _shape(points: Iterable[tuple[dict[str, str], Any]]) -> Any:
    points = list(points)
    if not points:
        return None
    first = points[0][0]
    if not first:
        return points[0][1]
    if len(first) == 1:
        (label,) = first
        return {label: {labels.get(label, ""): value for labels, value in points}}
    return [{**labels, "@": value} for labels, value in points]


def metrics_json(registry: Collector = REGISTRY, prefix: str = "") -> dict[str, Any]:
    """KumoMTA's JSON form of ``registry`` (see the module docstring)."""
    out: dict[str, Any] = {}
    for family in _collect(registry, prefix):
        entry: dict[str, Any] = {}
        if family.documentation:
            entry["help"] = family.documentation
        entry["type"] = family.type
        entry["value"] = _value(family)
        out[_exposed_name(family)] = entry
    return out


async def _metrics(request: web.Request, auth: AuthInfo) -> web.Response:
    body = prometheus_text(REGISTRY, request.query.get("prefix", ""))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics_json(request: web.Request, auth: AuthInfo) -> web.Response:
    return web.json_response(metrics_json(REGISTRY, request.query.get("prefix", "")))


def routes() -> list[Route]:
    return [Route("GET", "/metrics", _metrics), Route("GET", "/metrics.json", _metrics_json)]
