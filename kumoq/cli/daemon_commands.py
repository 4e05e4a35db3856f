"""``kumoq serve``, ``validate`` and ``tail``: the commands that run kumoq or read its files
(the admin commands, which talk to a running kumoq over HTTP, are in the sibling modules).
``validate`` is kumoq.validation: its findings go to stderr, one summary line to stdout (or
the whole report as JSON with ``--json``); exit 1 when there is an error.

Diagnostics go to stderr (``--diag-format text|json``); log records are the product's data and
go to the files the policy configures, never to stderr. kumoq.daemon, kumoq.validation and
kumoq.logs.tail are imported only by the command that needs them, so the admin commands start
fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from kumoq.errors import KumoqError

__all__ = ["register", "setup_diagnostics"]

log = logging.getLogger("kumoq")


# A worker of `kumoq serve --workers N` says which one it is in every diagnostic line.
_WORKER = os.environ.get("KUMOQ_WORKER_INDEX")
_WORKER_FIELD: dict[str, str] = {} if _WORKER is None else {"worker": _WORKER}
_TEXT_FORMAT = "%(asctime)s %(levelname)-5s " + (
    "%(name)s: %(message)s" if _WORKER is None else f"worker-{_WORKER} %(name)s: %(message)s"
)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "target": record.name,
            **_WORKER_FIELD,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_diagnostics(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


SERVE_GC_THRESHOLD: Final = (5_000, 10, 10)  # gc.set_threshold for `kumoq serve`


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(policy: Path) -> int:
    from kumoq.daemon import Daemon

    # Each message in flight holds a few hundred small objects for tens of milliseconds, so
    # most of what the youngest generation holds at a collection is still alive: collecting
    # it every 700 allocations (the default) walks the same objects again and again. Every
    # 5,000 halves the collector's time (relay bench, RocksDB: 0.27 s -> 0.14 s per 10,000
    # messages) for pauses of about 2 ms.
    gc.set_threshold(*SERVE_GC_THRESHOLD)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signame: str) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("received %s: shutting down gracefully (again to force)", signame)
                stop.set()
            else:
                log.warning("received %s again: exiting now", signame)
                raise SystemExit(1)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        daemon = Daemon(policy)

        def on_hangup() -> None:
            log.info("received SIGHUP: reloading the policy %s", policy)
            daemon.request_reload()

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await daemon.run(stop)

    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        runner.run(run())
    return 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what the policy prints (Lua's ``print`` writes to file descriptor 1) to stderr,
    so that stdout carries only the JSON report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _validate(policy: Path, queues: list[str], as_json: bool) -> int:
    from kumoq.validation import validate_policy

    if as_json:
        with _stdout_to_stderr():
            report = validate_policy(policy, queues)
        print(json.dumps(report.as_dict(), indent=2))
    else:
        report = validate_policy(policy, queues)
        for finding in report.findings:
            print(finding.as_text(), file=sys.stderr)
        print(report.summary())
    return 0 if report.ok else 1


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"--workers takes a number from 1 to 256, not {text!r}")
    return count


def _queue_name(text: str) -> str:
    from kumoq.message import parse_queue_name

    parts = parse_queue_name(text)
    if not parts.domain or "@" in parts.domain or ":" in parts.domain:
        raise argparse.ArgumentTypeError(
            f"invalid queue name {text!r}: expected [campaign:][tenant@]domain[!routing_domain]"
        )
    return text


def _tail(log_dir: Path, follow: bool) -> int:
    from kumoq.logs.tail import main_tail

    return main_tail(str(log_dir), follow=follow)


def _run(args: argparse.Namespace) -> int:
    setup_diagnostics(args.diag_format, args.diag_level)
    try:
        if args.command == "serve":
            if not args.policy.is_file():
                log.error("policy file %s does not exist", args.policy)
                return 1
            if args.workers > 1:
                from kumoq.cli.supervisor import supervise

                diag = [f"--diag-format={args.diag_format}", f"--diag-level={args.diag_level}"]
                return supervise(args.policy, args.workers, diag)
            return _serve(args.policy)
        if args.command == "validate":
            return _validate(args.policy, args.queue, args.json)
        return _tail(args.log_dir, not args.no_follow)
    except KumoqError as exc:
        log.error("%s", exc)
        return 1


def register(sub: Any) -> None:
    """Add ``serve``, ``validate`` and ``tail`` to the subcommands ``sub``."""
    serve = sub.add_parser("serve", help="run the MTA in the foreground")
    serve.add_argument("--policy", type=Path, required=True, help="the policy file (init.lua)")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="run N worker processes sharing the listeners (SO_REUSEPORT), each with its own "
        "spool directory under the configured one (default 1: one process)",
    )
    validate = sub.add_parser(
        "validate",
        help="load the policy, run init and the queue and egress events for sample queues, "
        "check its paths and listeners; report every error",
    )
    validate.add_argument("--policy", type=Path, required=True)
    validate.add_argument(
        "--queue",
        action="append",
        default=[],
        type=_queue_name,
        metavar="QUEUE",
        help="a sample queue, campaign:tenant@domain[!routing_domain] (repeatable; default: "
        "gmail.com, yahoo.com, outlook.com, hotmail.com, icloud.com, aol.com, example.com)",
    )
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    tail = sub.add_parser("tail", help="print log records as they are written")
    tail.add_argument("log_dir", type=Path)
    tail.add_argument("--no-follow", action="store_true", help="print what exists, then exit")
    for parser in (serve, validate, tail):
        parser.set_defaults(local=_run)
