"""The smart sink: an SMTP server that takes any mail, keeps it in a maildir, and answers as told.

``kumoq sink`` and the ``smart_sink`` fixture run it. It is kumoq's own ESMTP listener
(``kumoq.smtp.server``: the sans-IO session, PIPELINING, many concurrent connections) with a
``SmtpHandler`` of its own instead of the daemon's reception. Like KumoMTA's test sink
(``examples/smart-sink-docker``), it answers by the recipient's local part, at RCPT:

- a local part containing ``tempfail``: ``400 4.0.0 tempfail requested``;
- containing ``permfail``: ``500 5.0.0 permfail requested``;
- starting with a code and a dash (``450-``, ``421-``, ``550-``, any 4xx or 5xx): that code,
  ``you said <local part>``; a 421 closes the connection, as a 421 does;
- starting with ``250-``: accepted, whatever the random percentages say.

Every other recipient is tempfailed (``451``) with probability ``tempfail_percent``, else
permfailed (``550``) with probability ``permfail_percent``, from a ``random.Random(seed)``;
the rest are accepted. ``delay`` seconds pass before DATA is answered. During the
``refuse_window`` (from, until: seconds after the first session) every new session is refused
with a 421 banner and closed, as a destination blocking the sender for a while does (the
``refuse`` window of a what-if scenario, kumoq.simulate). With a ``seed`` the random outcomes
are a fixed sequence, one draw per recipient left to them, so a run and a simulation with the
same seed see the same number of random failures. Each accepted recipient
becomes one file in the maildir (``Return-Path:`` and ``Delivered-To:`` prepended, as a local
delivery agent writes them), unless the sink only counts.

A *message* is one recipient, as KumoMTA and kumoq count them. ``SinkCounts`` keeps sessions,
peak concurrency, transactions, accepted, tempfailed and permfailed messages, bytes and the
messages per session; ``SmartSink.counts()`` gives them as JSON-ready data, and the
``stats_file`` (if any) is rewritten with them every second.

Imports kumoq.smtp (server, handler, replies), kumoq.config.listener, kumoq.message and the
sibling kumoq.testing.sink_store; nothing of the daemon, the spool or the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from kumoq.config.listener import EsmtpListenerConfig, parse_listen
from kumoq.errors import ConfigError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.handler import ConnectionMeta
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from kumoq.testing.sink_store import SinkMaildir

__all__ = ["SinkCounts", "SinkHandler", "SinkOptions", "SmartSink", "decide", "format_counts"]

TEMPFAIL: Final = Reply(400, "4.0.0", "tempfail requested")
PERMFAIL: Final = Reply(500, "5.0.0", "permfail requested")
RANDOM_TEMPFAIL: Final = Reply(451, "4.3.0", "random tempfail (tempfail_percent)")
RANDOM_PERMFAIL: Final = Reply(550, "5.1.1", "random permfail (permfail_percent)")
ACCEPTED: Final = Reply(250, "2.0.0", "OK sunk")
_CODE_PREFIX: Final = re.compile(r"^([245])(\d\d)-")
_FORCE_ACCEPT: Final = "accept"
_STATS_EVERY: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkOptions:
    """How a sink listens and answers. ``maildir=None`` only counts; ``listen`` port 0 picks a
    free port; ``stats_file`` is rewritten every second with the counts as JSON."""

    listen: str = "127.0.0.1:2026"
    maildir: Path | None = None
    tempfail_percent: float = 0.0
    permfail_percent: float = 0.0
    delay: float = 0.0
    seed: int | None = None
    stats_file: Path | None = None
    hostname: str | None = None
    refuse_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("tempfail_percent", "permfail_percent"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{name} must be between 0 and 100, got {value!r}")
        if self.tempfail_percent + self.permfail_percent > 100:
            raise ValueError("tempfail_percent and permfail_percent add up to more than 100")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative, got {self.delay!r}")
        window = self.refuse_window
        if window is not None and not 0 <= window[0] < window[1]:
            raise ValueError(f"refuse_window must be (from, until) with 0 <= from < until, "
                             f"got {window!r}")  # fmt: skip
        try:
            parse_listen("listen", self.listen)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def decide(local_part: str) -> Reply | str | None:
    """The answer the local part asks for: a Reply, ``"accept"`` (``250-``: no random
    failure), or None (left to the random percentages)."""
    lowered = local_part.lower()
    if "tempfail" in lowered:
        return TEMPFAIL
    if "permfail" in lowered:
        return PERMFAIL
    m = _CODE_PREFIX.match(local_part)
    if m is None:
        return None
    code = int(m.group(1) + m.group(2))
    if code < 400:
        return _FORCE_ACCEPT if m.group(1) == "2" else None
    return _said(code, local_part)


def _said(code: int, local_part: str) -> Reply:
    return Reply(code, f"{code // 100}.0.0", f"you said {local_part}")


@final
class SinkCounts:
    """What a sink saw. Mutated on the sink's event loop only; ``snapshot()`` there too."""

    __slots__ = (
        "accepted",
        "bytes",
        "peak_concurrency",
        "per_session",
        "permfailed",
        "refused",
        "sessions",
        "started",
        "store_errors",
        "stored",
        "tempfailed",
        "transactions",
    )

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.sessions = 0
        self.refused = 0
        self.peak_concurrency = 0
        self.transactions = 0
        self.accepted = 0
        self.tempfailed = 0
        self.permfailed = 0
        self.bytes = 0
        self.stored = 0
        self.store_errors = 0
        # session id -> accepted messages; one small entry per session that sent mail
        self.per_session: dict[str, int] = {}

    def snapshot(self, active: int) -> dict[str, Any]:
        """The counts as JSON-ready data; ``active`` is the number of open sessions."""
        elapsed = time.monotonic() - self.started
        with_mail = self.per_session.values()
        idle = self.sessions - len(self.per_session)  # sessions that sent no accepted message
        return {
            "sessions": self.sessions,
            "refused_sessions": self.refused,
            "active_sessions": active,
            "peak_concurrency": self.peak_concurrency,
            "transactions": self.transactions,
            "accepted": self.accepted,
            "tempfailed": self.tempfailed,
            "permfailed": self.permfailed,
            "stored": self.stored,
            "store_errors": self.store_errors,
            "bytes": self.bytes,
            "messages_per_session": {
                "min": 0 if idle > 0 or not with_mail else min(with_mail),
                "mean": round(self.accepted / self.sessions, 3) if self.sessions else 0.0,
                "max": max(with_mail, default=0),
            },
            "elapsed": round(elapsed, 3),
            "accepted_per_second": round(self.accepted / elapsed, 1) if elapsed > 0 else 0.0,
        }


def format_counts(counts: dict[str, Any]) -> str:
    """A few lines for a person (the summary ``kumoq sink`` prints when it stops)."""
    per = counts["messages_per_session"]
    return "\n".join(
        (
            f"sessions: {counts['sessions']} (peak {counts['peak_concurrency']} concurrent, "
            f"{counts['active_sessions']} open)",
            f"messages: {counts['accepted']} accepted, {counts['tempfailed']} tempfailed, "
            f"{counts['permfailed']} permfailed in {counts['transactions']} transactions",
            f"per session: min {per['min']}, mean {per['mean']:.1f}, max {per['max']}",
            f"stored: {counts['stored']} files ({counts['store_errors']} errors), "
            f"{counts['bytes']} bytes received",
            f"elapsed: {counts['elapsed']:.1f} s, {counts['accepted_per_second']:.1f} "
            "accepted messages/s",
        )
    )


@final
class SinkHandler:
    """The ``SmtpHandler`` (kumoq.smtp.handler) that makes the listener a sink."""

    def __init__(self, options: SinkOptions, counts: SinkCounts, store: SinkMaildir | None):
        self.options = options
        self.counts = counts
        self.store = store
        self.listener: EsmtpListener | None = None
        self._rng = random.Random(options.seed)
        self._tempfail = options.tempfail_percent / 100.0
        self._failing = (options.tempfail_percent + options.permfail_percent) / 100.0
        self._first_session: float | None = None

    def ready(self) -> bool:
        # The listener asks once per new connection, just before it greets it: count it here.
        # False refuses it (a 421 banner, then the listener closes it).
        counts = self.counts
        window = self.options.refuse_window
        if window is not None:
            now = time.monotonic()
            if self._first_session is None:
                self._first_session = now
            if window[0] <= now - self._first_session < window[1]:
                counts.refused += 1
                return False
        counts.sessions += 1
        listener = self.listener
        open_now = (listener.connection_count if listener is not None else 0) + 1
        if open_now > counts.peak_concurrency:
            counts.peak_concurrency = open_now
        return True

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        return None

    async def auth_plain(self, conn: ConnectionMeta, authz: str, authc: str, password: str) -> bool:
        return True  # a sink takes any credentials

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        return None

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        answer = decide(recipient.local_part)
        if answer is None and self._failing > 0:
            roll = self._rng.random()
            if roll < self._tempfail:
                answer = RANDOM_TEMPFAIL
            elif roll < self._failing:
                answer = RANDOM_PERMFAIL
        if isinstance(answer, Reply):
            if answer.code < 500:
                self.counts.tempfailed += 1
            else:
                self.counts.permfailed += 1
            return answer
        return None

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        counts = self.counts
        if self.options.delay > 0:
            await asyncio.sleep(self.options.delay)
        store = self.store
        if store is not None:
            head = f"Return-Path: <{sender.email}>\r\n"
            writes = [
                store.write(((head + f"Delivered-To: {r.email}\r\n").encode(), data))
                for r in recipients
            ]
            results = await asyncio.gather(*writes, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            counts.stored += len(results) - len(failed)
            if failed:
                counts.store_errors += len(failed)
                counts.tempfailed += len(recipients)
                return Reply(451, "4.3.0", f"the sink could not store the message: {failed[0]}")
        counts.transactions += 1
        counts.accepted += len(recipients)
        counts.bytes += len(data)
        session = conn.get("session_id", "")
        counts.per_session[session] = counts.per_session.get(session, 0) + len(recipients)
        return ACCEPTED

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        return None


@final
class SmartSink:
    """A running sink: ``await start()``, then ``address``, ``counts()``, ``await close()``.

    Also an async context manager."""

    def __init__(self, options: SinkOptions) -> None:
        self.options = options
        self.sink_counts = SinkCounts()
        self.store = SinkMaildir(options.maildir) if options.maildir is not None else None
        self.handler = SinkHandler(options, self.sink_counts, self.store)
        self.listener: EsmtpListener | None = None
        self._stats_task: asyncio.Task[None] | None = None

    async def start(self) -> SmartSink:
        """Bind and serve; raises ``kumoq.errors.ListenerError`` when the address is taken."""
        mapping: dict[str, Any] = {
            "listen": self.options.listen,
            "banner": "kumoq smart sink",
            "relay_hosts": ["0.0.0.0/0", "::/0"],  # a sink takes mail from anyone
            "invalid_line_endings": "Allow",
            "max_messages_per_connection": 1_000_000_000,
            "max_errors_per_connection": 1_000_000_000,
            "max_connections": 1_000_000,
            "data_processing_timeout": max(300.0, self.options.delay + 60.0),
        }
        if self.options.hostname:
            mapping["hostname"] = self.options.hostname
        config = EsmtpListenerConfig.from_mapping(mapping)
        self.listener = await start_esmtp_listener(config, self.handler)
        self.handler.listener = self.listener
        self.sink_counts.started = time.monotonic()
        if self.options.stats_file is not None:
            self._stats_task = asyncio.create_task(self._write_stats_every_second())
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self.listener is None:
            raise RuntimeError("the sink is not started")
        return self.listener.address

    def counts(self) -> dict[str, Any]:
        """The counts now (call on the sink's event loop)."""
        active = self.listener.connection_count if self.listener is not None else 0
        return self.sink_counts.snapshot(active)

    async def close(self, drain_seconds: float = 5.0) -> dict[str, Any]:
        """Stop listening, let open transactions finish (``421`` the idle sessions), write
        the stats file one last time; returns the final counts."""
        if self.listener is not None:
            await self.listener.close(drain_seconds)
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        if self.store is not None:
            await self.store.close()
        final = self.counts()
        if self.options.stats_file is not None:
            await asyncio.to_thread(_write_json, self.options.stats_file, final)
        return final

    async def _write_stats_every_second(self) -> None:
        assert self.options.stats_file is not None
        path = self.options.stats_file
        while True:
            await asyncio.to_thread(_write_json, path, self.counts())
            await asyncio.sleep(_STATS_EVERY)

    async def __aenter__(self) -> SmartSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
