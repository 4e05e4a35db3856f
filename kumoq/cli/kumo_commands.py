"""kcli's admin commands, with its flags (reference §6.2): ``bounce``, ``bounce-list``,
``bounce-cancel``, ``suspend``, ``suspend-list``, ``suspend-cancel``, ``suspend-ready-q``,
``suspend-ready-q-list``, ``suspend-ready-q-cancel``, ``rebind``, ``inspect-sched-q`` and
``inspect-message``.

As in kcli, ``bounce``, ``suspend`` and ``rebind`` refuse to run without a criterion unless
``--everything`` says so (a usage error, exit 2), and ``--everything`` or ``--queue`` do not mix
with the other criteria. Durations are checked before anything is sent. Lists print as tables
(kcli prints some as JSON; ``--json`` does that here), and ``inspect-message`` ends with one
sentence saying why the message waits.

Imports kumoq.cli.client, kumoq.cli.render and kumoq.config.values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from kumoq.cli import render
from kumoq.cli.client import EXIT_OK, AdminClient
from kumoq.config.values import parse_duration
from kumoq.errors import ConfigError

__all__ = ["add_criteria", "duration_text", "register", "selection"]

A: Final = "/api/admin"
Run = Callable[[AdminClient, argparse.Namespace], int]


def duration_text(text: str) -> str:
    """An argparse type: ``text`` if it is a duration ('5m', '1h 30m', '2 days')."""
    try:
        parse_duration("duration", text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected spans such as '5m', '1h 30m' or '2 days'"
        ) from None
    return text


def add_criteria(
    parser: argparse.ArgumentParser, *, routing_domain: bool = True, queue: bool = True
) -> None:
    parser.add_argument("--domain", help="the domain to match; omitted: any domain")
    if routing_domain:
        parser.add_argument("--routing-domain", help="the routing domain to match")
    parser.add_argument("--campaign", help="the campaign to match")
    parser.add_argument("--tenant", help="the tenant to match")
    if queue:
        parser.add_argument("--queue", action="append", default=[], metavar="QUEUE",
                            help="an exact scheduled queue name (repeatable)")  # fmt: skip


def selection(args: argparse.Namespace, action: str) -> dict[str, Any]:
    """The criteria keys of the request; a usage error when none is given without
    ``--everything``, or when ``--everything``/``--queue`` meet other criteria."""
    parser: argparse.ArgumentParser = args.parser
    body: dict[str, Any] = {}
    for key in ("domain", "routing_domain", "campaign", "tenant"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = value
    queues = getattr(args, "queue", [])
    if queues and body:
        parser.error("--queue does not combine with --domain, --routing-domain, --campaign "
                     "or --tenant")  # fmt: skip
    if args.everything and (body or queues):
        parser.error("--everything does not combine with other criteria")
    if not (body or queues or args.everything):
        names = ", ".join(f"--{k.replace('_', '-')}" for k in ("domain", "routing_domain",
                          "campaign", "tenant") if hasattr(args, k))  # fmt: skip
        if hasattr(args, "queue"):
            names += " or --queue"
        parser.error(f"no {names} was given; use --everything if you mean to {action} "
                     "every queue")  # fmt: skip
    if queues:
        body["queue_names"] = list(queues)
    return body


def _criteria_text(entry: Mapping[str, Any]) -> str:
    parts = [f"{key}={entry[key]}" for key in ("campaign", "tenant", "domain", "routing_domain")
             if entry.get(key) is not None]  # fmt: skip
    if entry.get("queue_names"):
        parts.append("queues=" + ",".join(entry["queue_names"]))
    return ", ".join(parts) or "everything"


def _remain(value: Any) -> str:
    return render.humantime(value) if isinstance(value, int | float) else str(value or "")


def _ok(answer: Any) -> None:
    print("OK")


# -- bounce ------------------------------------------------------------------------------------


def _bounce(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **selection(args, "bounce")}
    if args.duration:
        body["duration"] = args.duration
    if args.suppress_logging:
        body["suppress_logging"] = True
    answer = client.post(f"{A}/bounce/v1", body)

    def human(answer: Any) -> None:
        print(answer.get("id"))
        print(f"bounced {render.count(answer.get('total_bounced', 0))} queued message(s); "
              f"matching messages keep bouncing for {args.duration or '5m'} "
              "(see kumoq bounce-list)", file=sys.stderr)  # fmt: skip

    render.emit(answer, args.json, human)
    return EXIT_OK


def _bounce_list(client: AdminClient, args: argparse.Namespace) -> int:
    def human(entries: Any) -> None:
        if not entries:
            print("no bounce rules in effect")
            return
        columns = [("ID", "<"), ("REASON", "<"), ("REMAIN", "<"), ("BOUNCED", ">"),
                   ("CRITERIA", "<")]  # fmt: skip
        render.table(columns, [
            (e.get("id"), e.get("reason"), _remain(e.get("duration")),
             render.count(e.get("total_bounced", 0)), _criteria_text(e))
            for e in entries
        ])  # fmt: skip

    render.emit(client.get(f"{A}/bounce/v1"), args.json, human)
    return EXIT_OK


def _cancel(path: str) -> Run:
    def run(client: AdminClient, args: argparse.Namespace) -> int:
        render.emit(client.delete(path, {"id": args.id}), args.json, _ok)
        return EXIT_OK

    return run


# -- suspend -----------------------------------------------------------------------------------


def _suspend(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **selection(args, "suspend")}
    if args.duration:
        body["duration"] = args.duration
    render.emit(client.post(f"{A}/suspend/v1", body), args.json, lambda a: print(a.get("id")))
    return EXIT_OK


def _suspend_list(client: AdminClient, args: argparse.Namespace) -> int:
    def human(entries: Any) -> None:
        if not entries:
            print("no suspensions in effect")
            return
        columns = [("ID", "<"), ("REASON", "<"), ("REMAIN", "<"), ("CRITERIA", "<")]
        render.table(columns, [(e.get("id"), e.get("reason"), _remain(e.get("duration")),
                                _criteria_text(e)) for e in entries])  # fmt: skip

    render.emit(client.get(f"{A}/suspend/v1"), args.json, human)
    return EXIT_OK


def _suspend_ready_q(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"name": args.name, "reason": args.reason}
    if args.duration:
        body["duration"] = args.duration
    answer = client.post(f"{A}/suspend-ready-q/v1", body)
    render.emit(answer, args.json, lambda a: print(a.get("id")))
    return EXIT_OK


def _suspend_ready_q_list(client: AdminClient, args: argparse.Namespace) -> int:
    def human(entries: Any) -> None:
        if not entries:
            print("no ready queue suspensions in effect")
            return
        columns = [("ID", "<"), ("NAME", "<"), ("REASON", "<"), ("REMAIN", "<")]
        render.table(columns, [(e.get("id"), e.get("name"), e.get("reason"),
                                _remain(e.get("duration"))) for e in entries])  # fmt: skip

    render.emit(client.get(f"{A}/suspend-ready-q/v1"), args.json, human)
    return EXIT_OK


# -- rebind and inspection ---------------------------------------------------------------------


def _rebind(client: AdminClient, args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    body: dict[str, Any] = {"reason": args.reason, **selection(args, "rebind")}
    data: dict[str, str] = {}
    if args.data is not None:
        try:
            given = json.loads(args.data)
        except ValueError as exc:
            parser.error(f"--data: not JSON: {exc}")
        if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
            parser.error('--data: expected a JSON object of strings, such as {"queue": "b.com"}')
        data.update(given)
    for pair in args.set:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip() or not value.strip():
            parser.error(f"--set: expected KEY=VALUE, got {pair!r}")
        data[key.strip()] = value.strip()
    body["data"] = data
    for flag in ("always_flush", "suppress_logging", "trigger_rebind_event"):
        if getattr(args, flag):
            body[flag] = True
    answer = client.post(f"{A}/rebind/v1", body)
    render.emit(
        answer,
        args.json,
        lambda a: print(f"rebound {render.count(a.get('rebound', 0))} message(s)"),
    )
    return EXIT_OK


def _message_rows(messages: list[Any]) -> list[tuple[Any, ...]]:
    rows = []
    for entry in messages:
        info = entry.get("message", {})
        rows.append((entry.get("id"), render.timestamp(info.get("due")),
                     render.count(info.get("num_attempts")), info.get("sender"),
                     info.get("recipient")))  # fmt: skip
    return rows


def _inspect_sched_q(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"queue_name": args.queue_name, "want_body": args.want_body or None,
              "limit": None if args.no_limit else args.limit}  # fmt: skip
    answer = client.get(f"{A}/inspect-sched-q/v1", params)

    def human(q: Any) -> None:
        render.fields([("queue", q.get("queue_name")),
                       ("scheduled", render.count(q.get("num_scheduled"))),
                       ("delayed", render.count(q.get("delayed_metric"))),
                       ("last changed", render.ago(q.get("last_changed")))])  # fmt: skip
        messages = q.get("messages") or []
        print()
        if not messages:
            print("no messages sampled")
            return
        columns = [("ID", "<"), ("DUE", "<"), ("ATTEMPTS", ">"), ("SENDER", "<"),
                   ("RECIPIENT", "<")]  # fmt: skip
        render.table(columns, _message_rows(messages))
        for entry in messages:
            data = entry.get("message", {}).get("data")
            if data is not None:
                print(f"\n--- {entry.get('id')}\n{data.rstrip()}")

    render.emit(answer, args.json, human)
    return EXIT_OK


def _inspect_message(client: AdminClient, args: argparse.Namespace) -> int:
    msg_id = args.id or args.id_option
    if not msg_id:
        args.parser.error("give the message's spool id")
    params = {"id": msg_id, "want_body": args.want_body or None}
    answer = client.get(f"{A}/inspect-message/v1", params)

    def human(m: Any) -> None:
        info = m.get("message", {})
        state = f" ({m['state']})" if m.get("state") else ""
        render.fields([
            ("id", m.get("id")),
            ("queue", f"{m['queue']}{state}" if m.get("queue") else None),
            ("sender", info.get("sender")), ("recipient", info.get("recipient")),
            ("attempts", render.count(info.get("num_attempts"))),
            ("due", render.ago(info.get("due")) if info.get("due") else "now"),
            ("meta", info.get("meta")), ("scheduling", info.get("scheduling")),
        ])  # fmt: skip
        print()
        print(render.waiting_sentence(m))
        if info.get("data") is not None:
            print(f"\n{info['data'].rstrip()}")

    render.emit(answer, args.json, human)
    return EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add kcli's admin commands to the subcommands ``sub``; ``common`` holds --endpoint etc."""

    def add(name: str, run: Run, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help,
                                                         description=help)  # fmt: skip
        parser.set_defaults(admin=run, parser=parser)
        return parser

    bounce = add("bounce", _bounce, "bounce queued and arriving messages that match "
                 "(AdminBounce records); there is no undo")  # fmt: skip
    add_criteria(bounce)
    bounce.add_argument("--reason", required=True, help="logged with each bounced message")
    bounce.add_argument("--everything", action="store_true", help="bounce every queue")
    bounce.add_argument("--suppress-logging", action="store_true",
                        help="log no AdminBounce records")  # fmt: skip
    bounce.add_argument("--duration", type=duration_text,
                        help="how long arriving messages keep bouncing (default 5m)")  # fmt: skip
    add("bounce-list", _bounce_list, "the bounce rules in effect")
    cancel = add("bounce-cancel", _cancel(f"{A}/bounce/v1"), "cancel a bounce rule")
    cancel.add_argument("--id", required=True, help="the rule's id (from bounce-list)")

    suspend = add("suspend", _suspend, "hold the matching scheduled queues")
    add_criteria(suspend, routing_domain=False)
    suspend.add_argument("--reason", required=True)
    suspend.add_argument("--everything", action="store_true", help="suspend every queue")
    suspend.add_argument("--duration", type=duration_text, help="default 5m")
    add("suspend-list", _suspend_list, "the suspensions in effect")
    cancel = add("suspend-cancel", _cancel(f"{A}/suspend/v1"),
                 "cancel a suspension; delivery resumes at once")  # fmt: skip
    cancel.add_argument("--id", required=True, help="the rule's id (from suspend-list)")

    ready = add("suspend-ready-q", _suspend_ready_q, "hold one ready queue (egress path)")
    ready.add_argument("--name", required=True, help="the ready queue's name")
    ready.add_argument("--reason", required=True)
    ready.add_argument("--duration", type=duration_text, help="default 5m")
    add("suspend-ready-q-list", _suspend_ready_q_list, "the ready queue suspensions in effect")
    cancel = add("suspend-ready-q-cancel", _cancel(f"{A}/suspend-ready-q/v1"),
                 "cancel a ready queue suspension")  # fmt: skip
    cancel.add_argument("--id", required=True, help="the rule's id")

    rebind = add("rebind", _rebind, "move matching messages to the queues their new meta names")
    add_criteria(rebind, queue=False)
    rebind.add_argument("--reason", required=True, help="logged in AdminRebind records")
    rebind.add_argument("--everything", action="store_true", help="match every queue")
    rebind.add_argument("--always-flush", action="store_true",
                        help="make every matched message due now, moved or not")  # fmt: skip
    rebind.add_argument("--suppress-logging", action="store_true")
    rebind.add_argument("--trigger-rebind-event", action="store_true",
                        help="call rebind_message(msg, data) instead of setting meta")  # fmt: skip
    rebind.add_argument("--data", help='a JSON object of strings: {"queue": "b.com"}')
    rebind.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    sched = add("inspect-sched-q", _inspect_sched_q, "a scheduled queue and some of its messages")
    sched.add_argument("queue_name", help="the scheduled queue's name")
    sched.add_argument("--want-body", action="store_true", help="include message text")
    limits = sched.add_mutually_exclusive_group()
    limits.add_argument("--limit", type=int, default=5, help="messages to show (default 5)")
    limits.add_argument("--no-limit", action="store_true", help="show every message")

    inspect = add("inspect-message", _inspect_message, "one message, and why it is waiting")
    inspect.add_argument("id", nargs="?", help="the message's spool id")
    inspect.add_argument("--id", dest="id_option", help=argparse.SUPPRESS)
    inspect.add_argument("--want-body", action="store_true", help="include its text")
