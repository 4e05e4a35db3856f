"""Admission control for the inbound listener: who may connect, how much message data the
connections may hold in memory, and the accept failures the listener counts.

``Admission`` keeps one listener's books (docs/security.md#limits):

- connections per client IP, against ``max_connections_per_ip``; over it a new connection
  gets ``421 4.7.0 <host> too many connections from your address`` and is closed. A connection
  refused at ``max_connections`` or ``max_connections_per_ip`` counts in KumoMTA's
  ``total_connections_denied{service="esmtp_listener"}`` (one refused while draining or before
  the spool is ready does not, as in KumoMTA);
- the bytes of message data its connections hold -- content being received, and a complete
  message while its DATA handler runs -- against ``max_buffered_data`` for the listener and
  ``max_buffered_data_per_ip`` for each client IP. A connection that cannot reserve what it
  receives fails that message (``452 4.3.1 Insufficient system storage: too much message data
  in flight`` at its end) and drops its bytes (``smtp/connection.py``).

A peer in ``relay_hosts`` is not held to ``max_connections_per_ip`` (its key is None): a relay
host is a trusted injector, as Postfix exempts ``$mynetworks`` from its per-client connection
limits. The data budgets hold every peer: only a peer with accepted recipients sends content,
and today that is a relay host.

- failed SMTP AUTH attempts per client IP (``smtp/auth.py``'s ``AuthFailures``): after
  ``max_auth_failures_per_ip`` within ``auth_failure_window``, AUTH from that IP gets
  ``454 4.7.0 Temporary authentication failure`` without asking the policy, until the oldest
  of those failures is a window old. Both kinds of refusal count in the
  ``smtp_server_auth_failures`` metric; a client IP that reaches the limit is logged.

``AcceptFailures`` counts a listener's failed ``accept()`` calls in the ``accept_failures``
metric and logs them at most once every few seconds, with the count since the last line.

Imports: logging, errno, kumoq.config.listener, kumoq.smtp.auth, kumoq.smtp.replies,
kumoq.metrics. Time comes
in as ``now``; no asyncio, no sockets.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Final

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.metrics import ACCEPT_FAILURES, SMTP_AUTH_FAILURES, TOTAL_CONNECTIONS_DENIED
from kumoq.smtp import replies as R
from kumoq.smtp.auth import AuthFailures
from kumoq.smtp.replies import Reply

__all__ = ["OUT_OF_RESOURCES", "AcceptFailures", "Admission"]

log = logging.getLogger("kumoq.smtp.server")

OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REASONS: Final = {
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOBUFS: "no buffer space",
    errno.ENOMEM: "out of memory",
}


class Admission:
    """One listener's books on its peers. For connections, ``key`` is the client IP, or None
    for a peer in ``relay_hosts``; for data, ``ip`` is the client IP. O(1) per call; entries
    of IPs with nothing left are dropped, so the books hold only the peers connected now."""

    __slots__ = (
        "_auth",
        "_conns",
        "_held",
        "_held_by",
        "_max_held",
        "_max_held_ip",
        "_max_ip",
        "config",
    )

    def __init__(self, config: EsmtpListenerConfig) -> None:
        self.config = config
        self._max_ip = config.max_connections_per_ip
        self._max_held = config.max_buffered_data
        self._max_held_ip = config.max_buffered_data_per_ip
        self._conns: dict[str, int] = {}
        self._held = 0
        self._held_by: dict[str, int] = {}
        self._auth = AuthFailures(config.max_auth_failures_per_ip, config.auth_failure_window)

    # --- connections ---------------------------------------------------------------------------
    def refusal(
        self, key: str | None, *, draining: bool, connections: int, ready: Callable[[], bool]
    ) -> Reply | None:
        """The 421 that refuses a new connection, or None: the listener drains, is at
        ``max_connections``, the peer at ``max_connections_per_ip``, or the handler is not
        ready (``ready()`` raising is logged and answered 421 technical difficulties)."""
        hostname = self.config.hostname
        if draining:
            return R.shutting_down(hostname)
        if connections >= self.config.max_connections:
            TOTAL_CONNECTIONS_DENIED.inc("esmtp_listener")
            return R.connection_limit_reached(hostname)
        if key is not None and self._conns.get(key, 0) >= self._max_ip:
            TOTAL_CONNECTIONS_DENIED.inc("esmtp_listener")
            return R.too_many_connections_from_ip(hostname)
        try:
            if not ready():
                return R.spool_not_ready(hostname)
        except Exception:
            log.exception("SmtpHandler.ready() failed")
            return R.technical_difficulties(hostname)
        return None

    def admit(self, key: str | None) -> None:
        """A connection from ``key`` was accepted (after ``refusal`` said None)."""
        if key is not None:
            self._conns[key] = self._conns.get(key, 0) + 1

    def leave(self, key: str | None) -> None:
        """An admitted connection from ``key`` is gone."""
        if key is not None:
            n = self._conns.get(key, 0) - 1
            if n > 0:
                self._conns[key] = n
            else:
                self._conns.pop(key, None)

    def connections_from(self, ip: str) -> int:
        return self._conns.get(ip, 0)

    # --- message data --------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Bytes of message data the listener's connections hold now."""
        return self._held

    def held_by(self, ip: str) -> int:
        return self._held_by.get(ip, 0)

    def reserve(self, ip: str, n: int) -> bool:
        """Take ``n`` more bytes for a connection from ``ip``; False (nothing taken) when that
        would go over ``max_buffered_data`` or ``max_buffered_data_per_ip``."""
        mine = self._held_by.get(ip, 0) + n
        if self._held + n > self._max_held or mine > self._max_held_ip:
            return False
        self._held_by[ip] = mine
        self._held += n
        return True

    def adjust(self, ip: str, n: int) -> None:
        """Take ``n`` bytes whatever the limits (negative: give them back)."""
        self._held += n
        mine = self._held_by.get(ip, 0) + n
        if mine > 0:
            self._held_by[ip] = mine
        else:
            self._held_by.pop(ip, None)

    # --- failed authentications ----------------------------------------------------------------
    def auth_blocked(self, ip: str, now: float) -> bool:
        """True (and counted) while ``ip`` may not try AUTH: it failed too often lately."""
        if not self._auth.blocked(ip, now):
            return False
        SMTP_AUTH_FAILURES.labels(self.config.listen, "rate_limited").inc()
        return True

    def auth_failed(self, ip: str, now: float) -> None:
        """An AUTH from ``ip`` was refused (535): count it."""
        SMTP_AUTH_FAILURES.labels(self.config.listen, "invalid_credentials").inc()
        if self._auth.failed(ip, now):
            log.warning(
                "esmtp listener %s: %d failed authentications from %s within %gs; its AUTH "
                "commands get 454 4.7.0 for the next %.0fs",
                self.config.listen, self._auth.limit, ip, self._auth.window,
                self._auth.retry_after(ip, now),
            )  # fmt: skip


class AcceptFailures:
    """The failed ``accept()`` calls of one listener: each is counted in ``accept_failures``
    (label ``listener``); a log line reports them at most once per ``interval`` seconds."""

    __slots__ = ("_interval", "_next_report", "_unreported", "name")

    def __init__(self, name: str, interval: float = 5.0) -> None:
        self.name = name
        self._interval = interval
        self._next_report = float("-inf")
        self._unreported = 0

    @property
    def unreported(self) -> int:
        """Failures since the last log line."""
        return self._unreported

    def failed(self, exc: OSError, now: float) -> None:
        ACCEPT_FAILURES.labels(self.name).inc()
        self._unreported += 1
        if now >= self._next_report:
            reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
            if exc.errno in OUT_OF_RESOURCES:
                reason += "; new connections wait in the listen backlog"
            log.error(
                "accept failed on %s: %s (%d failure%s since the last report)",
                self.name, reason, self._unreported, "" if self._unreported == 1 else "s",
            )  # fmt: skip
            self._unreported = 0
            self._next_report = now + self._interval

    def recovered(self, now: float) -> None:
        """A connection was accepted again: report the failures not yet reported."""
        if self._unreported and now >= self._next_report:
            log.warning(
                "accepting again on %s after %d more failed accept%s",
                self.name, self._unreported, "" if self._unreported == 1 else "s",
            )  # fmt: skip
            self._unreported = 0
            self._next_report = now + self._interval


class ClientLimits:
    """What the client of one connection may take: time, by three deadlines, and memory, by
    the message data it holds in its listener's ``Admission``.

    The deadlines, each ending the connection with a 421: ``client_timeout`` since the last
    byte (idle, ``4.3.2``), ``client_timeout`` since a command line began (``4.4.2``; a line
    dripped a byte at a time), ``data_timeout`` since the message content began (``4.4.2``).
    Times are the caller's loop times."""

    __slots__ = ("_admission", "_config", "body", "data_since", "held", "ip", "key", "line_since")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._config = admission.config
        self.ip = ""  # the client IP
        self.key: str | None = None  # the IP for max_connections_per_ip; None: a relay host
        self.line_since: float | None = None  # a partial command line waits since then
        self.data_since: float | None = None  # the message content began then
        self.held = 0  # bytes reserved in the listener's budget
        self.body = 0  # bytes of a complete message whose DATA handler runs

    # --- time ----------------------------------------------------------------------------------
    def waiting(self, now: float, reading_content: bool, partial_line: bool) -> float | None:
        """The session needs input: start the clock of a partial command line or of message
        content. Returns the content's deadline when its clock starts now (the caller's
        timer must fire by then), else None."""
        if reading_content:
            self.line_since = None
            if self.data_since is None:
                self.data_since = now
                return now + self._config.data_timeout
            return None
        self.data_since = None
        if partial_line and self.line_since is None:
            self.line_since = now
        return None

    def deadline(self, last_rx: float) -> tuple[float, Reply]:
        """The earliest deadline, and the 421 that ends the connection when it passes."""
        config = self._config
        timeout = config.client_timeout
        due, reply = last_rx + timeout, R.idle_too_long(config.hostname)
        if self.line_since is not None and self.line_since + timeout < due:
            due, reply = self.line_since + timeout, R.command_too_slow(config.hostname)
        if self.data_since is not None and self.data_since + config.data_timeout < due:
            due, reply = self.data_since + config.data_timeout, R.data_too_slow(config.hostname)
        return due, reply

    # --- memory --------------------------------------------------------------------------------
    def hold(self, content: int, *, anyway: bool = False) -> bool:
        """Hold ``content`` bytes of a message being received, plus ``body``. False (nothing
        more taken) when that goes over a limit, unless ``anyway``: the caller then fails
        the message being received."""
        more = content + self.body - self.held
        if more > 0 and not anyway and not self._admission.reserve(self.ip, more):
            return False
        if more < 0 or anyway:
            self._admission.adjust(self.ip, more)
        self.held += more
        return True

    def release(self) -> None:
        """The connection is gone: give back all it held."""
        if self.held:
            self._admission.adjust(self.ip, -self.held)
            self.held = 0
