"""``kumoq sink``, ``kumoq traffic-gen`` and ``kumoq harness``: testing a policy on one machine.

``sink`` runs the smart sink (kumoq.testing.sink) until SIGINT or SIGTERM, then prints its
counts (``--json`` for JSON); ``--stats-file`` is rewritten with them every second while it
runs. ``traffic-gen`` sends mail into an MTA over SMTP or the HTTP injection API
(kumoq.testing.traffic) and prints the summary (``--json`` for JSON).

Exit status of ``traffic-gen``: 0 when messages were sent (whatever the answers); 1 when
connections were made but no message got an answer; 2 a usage error; 3 nothing could be sent
because the target could not be reached.

``harness`` runs the policy file unmodified between the two (kumoq.testing.harness_run) and
prints the report (``--json``, ``--report out.html``). Exit status: 0 every message reached a
final disposition and every ``--expect`` held; 1 an expectation failed; 2 a usage error; 3 the
daemon did not start or nothing could be sent; 4 the timeout passed first.

kumoq.testing is imported only by the command that needs it, so the other commands start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from kumoq.cli.client import EXIT_SERVER, EXIT_UNREACHABLE

__all__ = ["register"]


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def _window(text: str) -> tuple[float, float]:
    """``FROM:UNTIL`` in seconds -> ``(from, until)``."""
    start, colon, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        window = (-1.0, -1.0)
    if not colon or not 0 <= window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"expected FROM:UNTIL seconds, FROM < UNTIL, got {text!r}")
    return window


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _size(text: str) -> int:
    import humanfriendly

    try:
        return int(humanfriendly.parse_size(text))
    except humanfriendly.InvalidSize as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """``500``, ``500/s``, ``30,000/m`` or ``1000/h`` -> messages per second."""
    from kumoq.config.values import ThrottleSpec
    from kumoq.errors import ConfigError

    plain = text.replace(",", "").replace("_", "").strip()
    try:
        value = float(plain)
    except ValueError:
        try:
            spec = ThrottleSpec.parse("--rate", text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return spec.limit / spec.period
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive rate, got {text!r}")
    return value


def _weighted(text: str) -> tuple[str, int]:
    from kumoq.testing.traffic_message import parse_weighted

    try:
        return parse_weighted(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    from kumoq.testing.traffic_message import parse_header

    try:
        return parse_header(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- kumoq sink --------------------------------------------------------------------------------
def _sink(args: argparse.Namespace) -> int:
    from kumoq.cli.daemon_commands import setup_diagnostics
    from kumoq.errors import KumoqError
    from kumoq.testing.sink import SinkOptions, SmartSink, format_counts
    from kumoq.testing.traffic import loop_factory

    setup_diagnostics(args.diag_format, args.diag_level)
    try:
        options = SinkOptions(
            listen=args.listen,
            maildir=None if args.no_store else args.maildir,
            tempfail_percent=args.tempfail_percent,
            permfail_percent=args.permfail_percent,
            delay=args.delay,
            seed=args.seed,
            stats_file=args.stats_file,
            hostname=args.hostname,
            refuse_window=args.refuse_window,
        )
    except ValueError as exc:
        print(f"kumoq sink: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sink = await SmartSink(options).start()
        host, port = sink.address
        where = f"maildir {options.maildir}" if options.maildir is not None else "not storing"
        print(f"kumoq sink: listening on {host}:{port} ({where})", file=sys.stderr, flush=True)
        await stop.wait()
        return await sink.close()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            counts = runner.run(run())
    except KumoqError as exc:
        print(f"kumoq sink: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(counts, indent=2) if args.json else format_counts(counts), flush=True)
    return 0


# --- kumoq traffic-gen -------------------------------------------------------------------------
def _traffic_gen(args: argparse.Namespace) -> int:
    from kumoq.testing.traffic import TargetUnreachable, TrafficOptions, run_traffic
    from kumoq.testing.traffic_message import MessageSpec

    try:
        options = TrafficOptions(
            target=args.target,
            http=args.http,
            count=args.count,
            concurrency=args.concurrency,
            per_connection=args.per_connection,
            http_batch=args.batch,
            rate=args.rate,
            timeout=args.timeout,
            message=MessageSpec(
                sender=args.sender,
                domains=tuple(args.domain or [("example.com", 1)]),
                local_part=args.local_part,
                size=args.size,
                headers=tuple(args.header or ()),
                campaign=args.campaign,
            ),
        )
    except ValueError as exc:
        print(f"kumoq traffic-gen: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_traffic(options, progress=None if args.quiet else sys.stderr)
    except TargetUnreachable as exc:
        if args.json:
            print(json.dumps(exc.summary.to_json(), indent=2))
        print(f"kumoq traffic-gen: nothing sent: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.format(), flush=True)
    answered = summary.accepted + summary.tempfailed + summary.permfailed
    return 0 if answered > 0 else EXIT_SERVER


# --- kumoq harness -----------------------------------------------------------------------------
def _expectation(text: str) -> Any:
    from kumoq.testing.harness_stats import Expectation

    try:
        return Expectation.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _harness(args: argparse.Namespace) -> int:
    from kumoq.testing.harness_report import format_text, write_html
    from kumoq.testing.harness_run import HarnessError, HarnessOptions, run_harness

    try:
        options = HarnessOptions(
            policy=args.policy, messages=args.messages,
            domains=tuple(args.domain or [("example.com", 1)]), concurrency=args.concurrency,
            per_connection=args.per_connection, size=args.size,
            headers=tuple(args.header or ()), campaign=args.campaign, sender=args.sender,
            local_part=args.local_part, rate=args.rate, http=args.http, timeout=args.timeout,
            tempfail_percent=args.tempfail_percent, permfail_percent=args.permfail_percent,
            sink_delay=args.sink_delay, sink_refuse_window=args.sink_refuse_window,
            seed=args.seed, expectations=tuple(args.expect or ()),
            workdir=args.workdir, keep=args.keep,
        )  # fmt: skip
    except ValueError as exc:
        print(f"kumoq harness: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_harness(options, progress=None if args.quiet else sys.stderr)
    except HarnessError as exc:
        print(f"kumoq harness: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.report is not None:
        write_html(result, args.report)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_text(result), flush=True)
    for failed in result.failed_expectations:
        print(f"kumoq harness: expectation {failed['expect']} failed: got {failed['actual']}",
              file=sys.stderr)  # fmt: skip
    if result.timed_out:
        print(f"kumoq harness: {result.stats.unfinished} messages had no final disposition "
              f"after {args.timeout:g} s", file=sys.stderr)  # fmt: skip
    return result.exit_status


def _register_harness(sub: Any) -> None:
    run = sub.add_parser(
        "harness",
        help="run a policy file unmodified against a smart sink with generated traffic, and "
             "report what it did",
    )  # fmt: skip
    run.add_argument("--policy", type=Path, required=True, help="the policy file, as it is")
    run.add_argument("--messages", type=_positive, default=1000, help="messages (default 1000)")
    run.add_argument("--domain", type=_weighted, action="append", metavar="DOMAIN[:WEIGHT]",
                     help="a recipient domain, weighted; repeat (default example.com)")  # fmt: skip
    run.add_argument("--concurrency", type=_positive, default=20,
                     help="SMTP connections at once (default 20)")  # fmt: skip
    run.add_argument("--per-connection", type=_positive, default=100, metavar="M",
                     help="messages per SMTP connection (default 100)")  # fmt: skip
    run.add_argument("--size", type=_size, default=2000, help="message size (default 2KB)")
    run.add_argument("--header", type=_header, action="append", metavar="NAME:VALUE",
                     help="add this header to every message; repeat")  # fmt: skip
    run.add_argument("--campaign", help="set X-Campaign: NAME")
    run.add_argument("--sender", default="harness@example.com", help="the envelope sender")
    run.add_argument("--local-part", default="user", metavar="PREFIX",
                     help="recipients are PREFIX<n>@DOMAIN; tempfail, permfail and 450- "
                          "prefixes make the sink refuse them (default user)")  # fmt: skip
    run.add_argument("--rate", type=_rate, metavar="N/s", help="pace the traffic")
    run.add_argument("--http", action="store_true",
                     help="inject over /api/inject/v1 instead of SMTP")  # fmt: skip
    run.add_argument("--timeout", type=_seconds, default=120.0, metavar="SECONDS",
                     help="longest wait, from the start of the traffic, for every message's "
                          "final disposition (default 120)")  # fmt: skip
    run.add_argument("--tempfail-percent", type=_percent, default=0.0, metavar="P",
                     help="the sink tempfails (451) this share of recipients")  # fmt: skip
    run.add_argument("--permfail-percent", type=_percent, default=0.0, metavar="P",
                     help="the sink permfails (550) this share of recipients")  # fmt: skip
    run.add_argument("--sink-delay", type=_seconds, default=0.0, metavar="SECONDS",
                     help="the sink waits this long before answering DATA")  # fmt: skip
    run.add_argument("--sink-refuse-window", type=_window, metavar="FROM:UNTIL",
                     help="the sink refuses new sessions with a 421 from FROM to UNTIL seconds "
                          "after its first session")  # fmt: skip
    run.add_argument("--seed", type=int, help="seed the sink's random failures")
    run.add_argument("--expect", type=_expectation, action="append", metavar="NAME=N",
                     help="fail (exit 1) unless NAME=N holds: delivered, bounced, "
                          "transient_failure, expired, received, delayed, unfinished, ... "
                          "(also >=, <=, >, <, !=); repeat")  # fmt: skip
    run.add_argument("--report", type=Path, metavar="FILE.html",
                     help="also write the report as an HTML page with plots")  # fmt: skip
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--workdir", type=Path, metavar="DIR",
                     help="run in DIR and keep it (default: a temporary directory)")  # fmt: skip
    run.add_argument("--keep", action="store_true", help="keep the temporary directory")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.set_defaults(local=_harness)


def register(sub: Any) -> None:
    """Add ``sink``, ``traffic-gen`` and ``harness`` to the subcommands ``sub``."""
    sink = sub.add_parser(
        "sink",
        help="an SMTP sink that stores mail and answers by recipient (tempfail, permfail, 450-)",
    )
    sink.add_argument("--listen", default="127.0.0.1:2026", metavar="HOST:PORT",
                      help="where to listen (default 127.0.0.1:2026; 0 picks a port)")  # fmt: skip
    store = sink.add_mutually_exclusive_group(required=True)
    store.add_argument("--maildir", type=Path, metavar="DIR",
                       help="store every accepted message in this maildir")  # fmt: skip
    store.add_argument("--no-store", action="store_true", help="only count")
    sink.add_argument("--tempfail-percent", type=_percent, default=0.0, metavar="P",
                      help="tempfail (451) this share of the other recipients")  # fmt: skip
    sink.add_argument("--permfail-percent", type=_percent, default=0.0, metavar="P",
                      help="permfail (550) this share of the other recipients")  # fmt: skip
    sink.add_argument("--delay", type=_seconds, default=0.0, metavar="SECONDS",
                      help="wait this long before answering DATA")  # fmt: skip
    sink.add_argument("--refuse-window", type=_window, metavar="FROM:UNTIL",
                      help="refuse new sessions with a 421 from FROM to UNTIL seconds after the "
                           "first session")  # fmt: skip
    sink.add_argument("--seed", type=int, help="seed the random failures (reproducible)")
    sink.add_argument("--stats-file", type=Path, metavar="PATH",
                      help="rewrite this JSON file with the counts every second")  # fmt: skip
    sink.add_argument("--hostname", help="the name in the greeting (default: this host's)")
    sink.add_argument("--json", action="store_true", help="print the final counts as JSON")
    sink.set_defaults(local=_sink)

    gen = sub.add_parser("traffic-gen", help="send generated mail over SMTP or HTTP and "
                                             "measure the answers")  # fmt: skip
    where = gen.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="HOST:PORT", help="an SMTP server")
    where.add_argument("--http", metavar="URL",
                       help="an HTTP listener: http://host:port or its /api/inject/v1")  # fmt: skip
    gen.add_argument("--count", type=_positive, default=100, help="messages (default 100)")
    gen.add_argument("--concurrency", type=_positive, default=10,
                     help="connections (HTTP: requests) at once (default 10)")  # fmt: skip
    gen.add_argument("--per-connection", type=_positive, default=100, metavar="M",
                     help="messages per SMTP connection (default 100)")  # fmt: skip
    gen.add_argument("--batch", type=_positive, default=100,
                     help="recipients per HTTP request (default 100)")  # fmt: skip
    gen.add_argument("--size", type=_size, default=2000,
                     help="size of each message, e.g. 2KB, 10KiB (default 2KB)")  # fmt: skip
    gen.add_argument("--domain", type=_weighted, action="append", metavar="DOMAIN[:WEIGHT]",
                     help="a recipient domain, weighted; repeat (default example.com)")  # fmt: skip
    gen.add_argument("--header", type=_header, action="append", metavar="NAME:VALUE",
                     help="add this header to every message; repeat")  # fmt: skip
    gen.add_argument("--campaign", help="set X-Campaign: NAME (read by the shipped policy)")
    gen.add_argument("--sender", default="traffic-gen@example.com", help="the envelope sender")
    gen.add_argument("--local-part", default="user", metavar="PREFIX",
                     help="recipients are PREFIX<n>@DOMAIN (default user)")  # fmt: skip
    gen.add_argument("--rate", type=_rate, metavar="N/s",
                     help="pace the messages: 500, 500/s, 30000/m (default: none)")  # fmt: skip
    gen.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                     help="longest wait for a reply or a request (default 60)")  # fmt: skip
    gen.add_argument("--json", action="store_true", help="print the summary as JSON")
    gen.add_argument("--quiet", action="store_true", help="no progress on stderr")
    gen.set_defaults(local=_traffic_gen)
    _register_harness(sub)
