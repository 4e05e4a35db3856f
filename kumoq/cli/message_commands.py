"""kumoq's own admin commands, beyond kcli: ``queue-messages`` (a queue's messages a page at a
time), ``retry`` (due now), ``delete-message``, ``campaign-progress``, and
``dead-letter list|show|requeue|purge``.

``retry``, ``dead-letter requeue`` and ``dead-letter purge`` act on every message only with
``--everything``; without a selector they are a usage error (exit 2), never a mass action.

Imports kumoq.cli.client, kumoq.cli.render and kumoq.cli.kumo_commands (its criteria flags).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from kumoq.cli import render
from kumoq.cli.client import EXIT_OK, AdminClient
from kumoq.cli.kumo_commands import Run, add_criteria, selection

__all__ = ["register"]

A: Final = "/api/admin"


def _next_page(command: str, answer: Any) -> None:
    cursor = answer.get("next_cursor")
    if cursor:
        print(f"\nmore: {command} --cursor {cursor}")


def _queue_messages(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"queue_name": args.queue_name, "cursor": args.cursor, "limit": args.limit}
    answer = client.get(f"{A}/queue-messages/v1", params)

    def human(page: Any) -> None:
        messages = page.get("messages") or []
        print(f"{page.get('queue_name')}: {render.count(page.get('num_scheduled'))} scheduled, "
              f"{len(messages)} shown")  # fmt: skip
        if messages:
            print()
            columns = [("ID", "<"), ("DUE", "<"), ("ATTEMPTS", ">"), ("PRIO", ">"),
                       ("SENDER", "<"), ("RECIPIENT", "<"), ("LAST RESPONSE", "<")]  # fmt: skip
            render.table(columns, [
                (m.get("id"), render.timestamp(m.get("due")) or "now",
                 render.count(m.get("num_attempts")), m.get("priority"), m.get("sender"),
                 m.get("recipient"), m.get("last_response"))
                for m in messages
            ])  # fmt: skip
        _next_page(f"kumoq queue-messages {args.queue_name} --limit {args.limit}", page)

    render.emit(answer, args.json, human)
    return EXIT_OK


def _retry(client: AdminClient, args: argparse.Namespace) -> int:
    others = [n for n, v in (("--id", args.id), ("--queue-name", args.queue_name)) if v]
    if args.id or args.queue_name:
        criteria = any(getattr(args, k) for k in ("domain", "routing_domain", "campaign",
                                                   "tenant", "queue", "everything"))  # fmt: skip
        if len(others) > 1 or criteria:
            args.parser.error("give one of --id, --queue-name, criteria or --everything")
        body: dict[str, Any] = {"id": args.id} if args.id else {"queue_name": args.queue_name}
    else:
        body = selection(args, "retry") or {"everything": True}
    answer = client.post(f"{A}/retry/v1", body)
    render.emit(
        answer,
        args.json,
        lambda a: print(f"retried {render.count(a.get('retried', 0))} message(s)"),
    )
    return EXIT_OK


def _delete_message(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"id": args.id, **({"reason": args.reason} if args.reason else {})}
    answer = client.post(f"{A}/delete-message/v1", body)
    render.emit(answer, args.json, lambda a: print(f"deleted {a.get('id', args.id)}"))
    return EXIT_OK


def _campaign_progress(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.get(f"{A}/campaign-progress/v1",
                        {"campaign": args.campaign, "tenant": args.tenant})  # fmt: skip

    def human(rows: Any) -> None:
        if not rows:
            print("no campaigns seen")
            return
        keys = ("received", "delivered", "transient_failures", "bounced", "expired", "pending")
        columns = [("CAMPAIGN", "<"), ("TENANT", "<"), ("RECEIVED", ">"), ("DELIVERED", ">"),
                   ("TRANSFAIL", ">"), ("BOUNCED", ">"), ("EXPIRED", ">"),
                   ("PENDING", ">")]  # fmt: skip
        render.table(columns, [
            (r.get("campaign") or "-", r.get("tenant") or "-",
             *(render.count(r.get(k, 0)) for k in keys))
            for r in rows
        ])  # fmt: skip

    render.emit(answer, args.json, human)
    return EXIT_OK


def _dead_list(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"queue_name": args.queue, "cursor": args.cursor, "limit": args.limit}
    answer = client.get(f"{A}/dead-letters/v1", params)

    def human(page: Any) -> None:
        messages = page.get("messages") or []
        print(f"{render.count(page.get('total', len(messages)))} dead letter(s), "
              f"{len(messages)} shown")  # fmt: skip
        if messages:
            print()
            columns = [("ID", "<"), ("QUEUE", "<"), ("RECIPIENT", "<"), ("TYPE", "<"),
                       ("SINCE", "<"), ("UNTIL", "<"), ("RESPONSE", "<")]  # fmt: skip
            render.table(columns, [
                (m.get("id"), m.get("queue"), m.get("recipient"), m.get("record_type"),
                 render.timestamp(m.get("since")), render.timestamp(m.get("until")),
                 m.get("response"))
                for m in messages
            ])  # fmt: skip
        _next_page("kumoq dead-letter list" + (f" --queue {args.queue}" if args.queue else ""),
                   page)  # fmt: skip

    render.emit(answer, args.json, human)
    return EXIT_OK


def _dead_show(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"id": args.id, "want_body": args.want_body or None}
    answer = client.get(f"{A}/dead-letter/v1", params)

    def human(d: Any) -> None:
        info = d.get("message") if isinstance(d.get("message"), dict) else {}
        data = info.pop("data", None)
        times = ("since", "until", "due")
        pairs = [
            (k, render.timestamp(v) if k in times and v is not None else v)
            for k, v in {**d, **info}.items()
            if k != "message"
        ]
        render.fields(pairs)
        if data is not None:
            print(f"\n{str(data).rstrip()}")

    render.emit(answer, args.json, human)
    return EXIT_OK


def _dead_selection(action: str) -> Run:
    def run(client: AdminClient, args: argparse.Namespace) -> int:
        given = [bool(args.ids), bool(args.queue), args.everything]
        if sum(given) != 1:
            args.parser.error(f"say which dead letters to {action}: spool ids, --queue or "
                              "--everything (exactly one)")  # fmt: skip
        body: dict[str, Any] = (
            {"ids": args.ids} if args.ids
            else {"queue_name": args.queue} if args.queue else {"everything": True}
        )  # fmt: skip
        answer = client.post(f"{A}/dead-letters/{action}/v1", body)
        key = f"{action}d"
        render.emit(
            answer,
            args.json,
            lambda a: print(f"{key} {render.count(a.get(key, 0))} dead letter(s)"),
        )
        return EXIT_OK

    return run


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add kumoq's own admin commands to the subcommands ``sub``."""

    def add(parent: Any, name: str, run: Run, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help,
                                                            description=help)  # fmt: skip
        parser.set_defaults(admin=run, parser=parser)
        return parser

    def page(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cursor", help="the cursor a previous page printed")
        parser.add_argument("--limit", type=int, default=100, help="per page, 1 to 1000")

    qm = add(sub, "queue-messages", _queue_messages,
             "a scheduled queue's messages: due time, attempts, last response")  # fmt: skip
    qm.add_argument("queue_name")
    page(qm)

    retry = add(sub, "retry", _retry, "make waiting messages due now")
    retry.add_argument("--id", help="one message's spool id")
    retry.add_argument("--queue-name", help="every message of one scheduled queue")
    add_criteria(retry)
    retry.add_argument("--everything", action="store_true", help="every scheduled queue")

    delete = add(sub, "delete-message", _delete_message,
                 "remove one waiting message (AdminBounce record)")  # fmt: skip
    delete.add_argument("id", help="the message's spool id")
    delete.add_argument("--reason", help="logged in the AdminBounce record")

    progress = add(sub, "campaign-progress", _campaign_progress,
                   "per campaign and tenant: received, delivered, failed, pending")  # fmt: skip
    progress.add_argument("--campaign")
    progress.add_argument("--tenant")

    dead = sub.add_parser("dead-letter", help="list, show, requeue or purge dead letters",
                          description="messages kept after a bounce or expiry "
                                      "(dead_letter_retention)")  # fmt: skip
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = add(actions, "list", _dead_list, "the dead letters, a page at a time")
    listing.add_argument("--queue", help="only this scheduled queue's")
    page(listing)
    show = add(actions, "show", _dead_show, "one dead letter")
    show.add_argument("id")
    show.add_argument("--want-body", action="store_true", help="include its text")
    for action, help in (("requeue", "back to their queues, attempts reset"),
                         ("purge", "remove for good")):  # fmt: skip
        chosen = add(actions, action, _dead_selection(action), f"dead letters {help}")
        chosen.add_argument("ids", nargs="*", metavar="ID", help="spool ids")
        chosen.add_argument("--queue", help="every dead letter of this scheduled queue")
        chosen.add_argument("--everything", action="store_true", help="every dead letter")
