"""``kumoq serve``, ``validate`` and ``tail``: the commands that run kumoq or read its files
(the admin commands, which talk to a running kumoq over HTTP, are in the sibling modules).

Diagnostics go to stderr (``--diag-format text|json``); log records are the product's data and
go to the files the policy configures, never to stderr. kumoq.daemon, kumoq.declarations
and kumoq.logs.tail are imported only by the command that needs them, so the admin commands start
fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kumoq.errors import KumoqError

__all__ = ["register", "setup_diagnostics"]

log = logging.getLogger("kumoq")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "target": record.name,
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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(policy: Path) -> int:
    from kumoq.daemon import Daemon

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


def _validate(policy: Path) -> int:
    from kumoq.declarations import load_policy

    _runtime, _events, decl = load_policy(policy)
    print(
        f"{policy}: OK ({len(decl.listeners)} SMTP listener(s), "
        f"{len(decl.spools)} spool(s), {len(decl.logs)} log destination(s))"
    )
    return 0


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
            return _serve(args.policy)
        if args.command == "validate":
            return _validate(args.policy)
        return _tail(args.log_dir, not args.no_follow)
    except KumoqError as exc:
        log.error("%s", exc)
        return 1


def register(sub: Any) -> None:
    """Add ``serve``, ``validate`` and ``tail`` to the subcommands ``sub``."""
    serve = sub.add_parser("serve", help="run the MTA in the foreground")
    serve.add_argument("--policy", type=Path, required=True, help="the policy file (init.lua)")
    validate = sub.add_parser("validate", help="load the policy and run init, then exit")
    validate.add_argument("--policy", type=Path, required=True)
    tail = sub.add_parser("tail", help="print log records as they are written")
    tail.add_argument("log_dir", type=Path)
    tail.add_argument("--no-follow", action="store_true", help="print what exists, then exit")
    for parser in (serve, validate, tail):
        parser.set_defaults(local=_run)
