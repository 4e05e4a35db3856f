"""``kumoq queue-summary``: kcli's summary of the ready and scheduled queues, for a person.

As kcli does, it reads the metrics (``/metrics.json`` here, KumoMTA's JSON form) and prints two
tables:

- the ready queues: SITE, SOURCE, PROTO, then D (delivered), T (transiently failed), C (open
  connections) and Q (messages ready), from ``total_messages_delivered``,
  ``total_messages_transfail``, ``connection_count`` (label ``service="<proto>:<ready
  queue>"``) and ``ready_count``, and a status column: a ready queue suspension, or the states
  ``ready-q-states`` reports;
- the scheduled queues: SCHEDULED QUEUE and COUNT, from ``scheduled_count{queue}``, and a
  status column naming the bounce or suspension that matches it.

Rows sort by name (natural order) or, with ``--by-volume``, by volume, largest first;
``--limit N`` keeps the first N of each; ``--domain D`` keeps the scheduled queues of domain D
and the ready queues whose site names it (kcli resolves D's MX instead). The status lookups
are skipped when the admin API is not served. The output is for people; ``--json`` prints the
rows as data.

Imports kumoq.cli.client, kumoq.cli.render and kumoq.message (queue-name parsing).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from kumoq.cli import render
from kumoq.cli.client import EXIT_OK, AdminClient, ServerError
from kumoq.message import parse_queue_name

__all__ = ["ReadyRow", "ScheduledRow", "ready_parts", "register", "rows_from_metrics"]

A: Final = "/api/admin"
_READY_METRICS: Final = {
    "total_messages_delivered": "delivered",
    "total_messages_transfail": "transfail",
    "connection_count": "connections",
    "ready_count": "ready",
}


@dataclass(slots=True)
class ReadyRow:
    name: str
    delivered: int = 0
    transfail: int = 0
    connections: int = 0
    ready: int = 0

    @property
    def volume(self) -> int:
        return self.delivered + self.transfail + self.connections + self.ready


@dataclass(slots=True)
class ScheduledRow:
    name: str
    count: int = 0


def ready_parts(name: str) -> tuple[str, str, str]:
    """``(site, source, protocol)`` of a ready queue name ``source->site@protocol``."""
    source, arrow, rest = name.partition("->")
    if not arrow:
        source, rest = "", name
    protocol = ""
    if rest.endswith("@smtp_client"):
        protocol = "smtp_client"
    else:
        for marker in ("@lua:", "@maildir"):
            at = rest.rfind(marker)
            if at >= 0:
                protocol = rest[at + 1 :]
                break
    site = rest[: len(rest) - len(protocol) - 1] if protocol else rest
    return site, source, protocol


def _samples(value: Any) -> Iterator[tuple[dict[str, str], float]]:
    """The ``(labels, number)`` pairs of a family's value in KumoMTA's metrics JSON."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield {}, float(value)
    elif isinstance(value, Mapping) and len(value) == 1:
        ((label, by_value),) = value.items()
        if isinstance(by_value, Mapping):
            for label_value, number in by_value.items():
                if isinstance(number, int | float):
                    yield {label: str(label_value)}, float(number)
    elif isinstance(value, list):
        for point in value:
            if isinstance(point, Mapping) and isinstance(point.get("@"), int | float):
                yield {k: str(v) for k, v in point.items() if k != "@"}, float(point["@"])


def rows_from_metrics(metrics: Mapping[str, Any]) -> tuple[list[ReadyRow], list[ScheduledRow]]:
    """The ready and scheduled queue rows of a ``/metrics.json`` answer, unsorted."""
    ready: dict[str, ReadyRow] = {}
    scheduled: dict[str, ScheduledRow] = {}
    for name, attribute in _READY_METRICS.items():
        family = metrics.get(name)
        if not isinstance(family, Mapping):
            continue
        for labels, number in _samples(family.get("value")):
            if "service" in labels:
                _proto, colon, queue = labels["service"].partition(":")
                if not colon:
                    continue  # a total over every queue, such as "smtp_client"
            elif "queue" in labels:
                queue = labels["queue"]
            else:
                continue
            row = ready.setdefault(queue, ReadyRow(queue))
            setattr(row, attribute, getattr(row, attribute) + int(number))
    family = metrics.get("scheduled_count")
    if isinstance(family, Mapping):
        for labels, number in _samples(family.get("value")):
            if "queue" in labels:
                row_s = scheduled.setdefault(labels["queue"], ScheduledRow(labels["queue"]))
                row_s.count += int(number)
    return list(ready.values()), list(scheduled.values())


def _optional(client: AdminClient, path: str) -> Any:
    """An admin list, or None when this kumoq does not serve the admin API."""
    try:
        return client.get(path)
    except ServerError as exc:
        if exc.status == 404:
            return None
        raise


def _matches(rule: Mapping[str, Any], queue: str) -> bool:
    if rule.get("queue_names"):
        return queue in rule["queue_names"]
    parts = parse_queue_name(queue)
    if rule.get("domain") and rule["domain"].lower() != parts.domain.lower():
        return False
    if rule.get("routing_domain") and (
        (parts.routing_domain or "").lower() != rule["routing_domain"].lower()
    ):
        return False
    if rule.get("campaign") and rule["campaign"] != parts.campaign:
        return False
    return not (rule.get("tenant") and rule["tenant"] != parts.tenant)


def _run(client: AdminClient, args: argparse.Namespace) -> int:
    metrics = client.get("/metrics.json")
    ready, scheduled = rows_from_metrics(metrics if isinstance(metrics, Mapping) else {})
    if args.domain:
        domain = args.domain.lower()
        scheduled = [r for r in scheduled if parse_queue_name(r.name).domain.lower() == domain]
        ready = [r for r in ready if domain in ready_parts(r.name)[0].lower()]
    if args.by_volume:
        ready.sort(key=lambda r: (-r.volume, render.natural_key(r.name)))
        scheduled.sort(key=lambda r: (-r.count, render.natural_key(r.name)))
    else:
        ready.sort(key=lambda r: render.natural_key(r.name))
        scheduled.sort(key=lambda r: render.natural_key(r.name))
    if args.limit is not None:
        ready, scheduled = ready[: args.limit], scheduled[: args.limit]
    if args.json:
        render.emit({"ready": [asdict(r) for r in ready],
                     "scheduled": [asdict(r) for r in scheduled]}, True, print)  # fmt: skip
        return EXIT_OK
    bounces = _optional(client, f"{A}/bounce/v1") or []
    suspends = _optional(client, f"{A}/suspend/v1") or []
    ready_suspends = _optional(client, f"{A}/suspend-ready-q/v1") or []
    states = (_optional(client, f"{A}/ready-q-states/v1") or {}).get("states_by_ready_queue", {})

    ready_rows = []
    for r in ready:
        status = [f"suspended: {s.get('reason')}" for s in ready_suspends
                  if s.get("name") == r.name]  # fmt: skip
        for key, state in (states.get(r.name) or {}).items():
            if isinstance(state, Mapping):
                status.append(f"{key}: {state.get('context', '')} @ {state.get('since', '')}")
        site, source, proto = ready_parts(r.name)
        ready_rows.append((site, source, proto, render.count(r.delivered),
                           render.count(r.transfail), render.count(r.connections),
                           render.count(r.ready), ", ".join(status)))  # fmt: skip
    render.table([("SITE", "<"), ("SOURCE", "<"), ("PROTO", "<"), ("D", ">"), ("T", ">"),
                  ("C", ">"), ("Q", ">"), ("", "<")], ready_rows)  # fmt: skip
    print()
    sched_rows = []
    for s in scheduled:
        bounce = next((b for b in bounces if _matches(b, s.name)), None)
        suspend = next((x for x in suspends if _matches(x, s.name)), None)
        note = (f"bounce: {bounce.get('reason')}" if bounce
                else f"suspended: {suspend.get('reason')}" if suspend else "")  # fmt: skip
        sched_rows.append((s.name, render.count(s.count), note))
    render.table([("SCHEDULED QUEUE", "<"), ("COUNT", ">"), ("", "<")], sched_rows)
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("queue-summary", parents=[common],
                            help="the ready and scheduled queues, for a person to read",
                            description=__doc__.splitlines()[0] if __doc__ else None)  # fmt: skip
    parser.add_argument("--limit", type=int, help="show at most LIMIT queues of each kind")
    parser.add_argument("--by-volume", action="store_true", help="largest queues first")
    parser.add_argument("--domain", help="only the queues of this domain")
    parser.set_defaults(admin=_run, parser=parser)
