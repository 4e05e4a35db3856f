"""The ``kumoq`` command line.

Run kumoq and read its files: ``serve``, ``validate``, ``tail`` (kumoq.cli.daemon_commands).
Test a policy end to end: ``sink``, ``traffic-gen`` and ``harness``
(kumoq.cli.testing_commands).
Forecast a campaign on virtual time: ``simulate`` (kumoq.cli.simulate_command).
Steer a running kumoq over its HTTP API, as KumoMTA's kcli does: ``queue-summary``
(kumoq.cli.queue_summary); ``bounce``, ``suspend``, ``suspend-ready-q`` with their ``-list``
and ``-cancel``, ``rebind``, ``inspect-sched-q``, ``inspect-message``
(kumoq.cli.kumo_commands); and kumoq's own ``queue-messages``, ``retry``, ``delete-message``,
``campaign-progress`` and ``dead-letter list|show|requeue|purge``
(kumoq.cli.message_commands).

The admin commands take ``--endpoint`` (or ``KUMOQ_ENDPOINT``; default
``http://127.0.0.1:8000``), ``--user``/``--password`` for Basic auth and ``--json`` for the
server's JSON as it came; they print aligned tables otherwise. Exit status: 0 done; 1 the
server answered an error (printed with its status); 2 a usage error; 3 kumoq could not be
reached.

Top of the layers: may import anything; the daemon side is imported only by ``serve``.
"""

from __future__ import annotations

import argparse
import os
import sys

from kumoq import __version__
from kumoq.cli import (
    daemon_commands,
    kumo_commands,
    message_commands,
    queue_summary,
    simulate_command,
    testing_commands,
)
from kumoq.cli.client import (
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    AdminClient,
    ServerError,
    Unreachable,
    resolve_endpoint,
)

__all__ = ["build_parser", "main"]


def _admin_options(suppress: bool) -> argparse.ArgumentParser:
    """The options every admin command takes; ``suppress`` leaves an option unset when not
    given, so the same option before the subcommand still counts."""
    default = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--endpoint", default=default, metavar="URL",
                       help="kumoq's HTTP listener (default: $KUMOQ_ENDPOINT, else "
                            "http://127.0.0.1:8000)")  # fmt: skip
    group.add_argument("--user", default=default, help="Basic auth user ($KUMOQ_USER)")
    group.add_argument("--password", default=default, help="Basic auth password "
                                                           "($KUMOQ_PASSWORD)")  # fmt: skip
    if suppress:
        parent.add_argument("--json", action="store_true",
                            help="print the server's JSON instead of a table")  # fmt: skip
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kumoq",
        description="kumoq: a mail transfer agent with KumoMTA's Lua policy API.",
        parents=[_admin_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"kumoq {__version__}")
    parser.add_argument("--diag-format", choices=("text", "json"), default="text")
    parser.add_argument("--diag-level", default="info", help="diagnostic log level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    daemon_commands.register(sub)
    testing_commands.register(sub)
    simulate_command.register(sub)
    common = _admin_options(suppress=True)
    queue_summary.register(sub, common)
    kumo_commands.register(sub, common)
    message_commands.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "local"):
        status: int = args.local(args)
        return status
    user = args.user if args.user is not None else os.environ.get("KUMOQ_USER")
    password = args.password if args.password is not None else os.environ.get("KUMOQ_PASSWORD")
    client = AdminClient(resolve_endpoint(args.endpoint), user=user, password=password)
    try:
        status = args.admin(client, args)
    except ServerError as exc:
        print(f"kumoq: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except Unreachable as exc:
        print(f"kumoq: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:  # `kumoq ... | head`
        sys.stderr.close()
        return 0
    return status
