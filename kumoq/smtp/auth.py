"""STARTTLS and SMTP AUTH as sans-IO pieces: a session's ``Security`` state, the SASL exchange
of one ``AUTH`` command, and the book of failed authentications per client IP.

``Security`` is what ``ServerSession`` knows of TLS and AUTH: whether STARTTLS is offered (the
caller can do a handshake and TLS is not up yet), pending (accepted, handshake not done) or
active, the EHLO keywords that follow from it (``STARTTLS`` before TLS, ``AUTH PLAIN LOGIN``
after), whether the client authenticated, and the AUTH exchange waiting for a response line.
``command(verb, argument, helo)`` answers ``STARTTLS`` and ``AUTH``: an event for the caller to
decide (``StartTls``, ``Auth``), a ``334`` challenge, or a refusal -- ``AUTH`` before TLS gets
``538 5.7.11 Encryption required for requested authentication mechanism`` (RFC 4954), after a
success ``503 5.5.1``, before EHLO ``503 5.5.1 Send EHLO first``.

``SaslExchange.begin(argument)`` reads the arguments of ``AUTH <mechanism> [initial-response]``
(RFC 4954) and says what to answer: a ``334`` challenge (the exchange goes on, and each
response line goes to ``respond(line)``), ``Credentials`` (the exchange is complete; the caller
checks them), or a 5xx reply that ends it. Two mechanisms:

- ``PLAIN`` (RFC 4616): one response, ``[authzid] NUL authcid NUL passwd`` in base64, each part
  UTF-8 of at most 255 octets and ``authcid`` not empty. An empty ``authzid`` means the
  ``authcid`` (KumoMTA does the same).
- ``LOGIN`` (draft-murchison-sasl-login): ``334 VXNlcm5hbWU6`` (``Username:``), then
  ``334 UGFzc3dvcmQ6`` (``Password:``); the user name is both identities. An initial response
  is taken as the user name.

A response that is not base64 gets ``501 5.5.2 Cannot Base64-decode client response``; one
that decodes to something else than the mechanism expects ``501 5.5.2 Malformed
authentication response``; ``*`` cancels with ``501 5.7.0``. ``redact(line)`` is the form of an
``AUTH`` command line that may be logged: the verb and the mechanism, never a credential.

``AuthFailures`` counts the failed authentications of each client IP over a sliding
``window``; at ``limit`` failures the IP is blocked until the oldest of them is ``window`` old.
It keeps at most ``max_clients`` IPs (the least recent failure is forgotten first).

Pure: imports the standard library, kumoq.smtp.events and kumoq.smtp.replies; time comes in as
``now``.
"""

from __future__ import annotations

import binascii
import re
from collections import deque
from typing import Final, NamedTuple

from kumoq.smtp import replies as R
from kumoq.smtp.events import Auth, StartTls
from kumoq.smtp.replies import Reply

__all__ = ["MECHANISMS", "AuthFailures", "Credentials", "SaslExchange", "Security", "redact"]

MECHANISMS: Final = ("PLAIN", "LOGIN")
"""Offered in EHLO as ``AUTH PLAIN LOGIN`` once TLS is active."""

MAX_FIELD: Final = 255  # RFC 4616 §2: authzid, authcid and passwd are at most 255 octets

# RFC 4954 §4: auth-command = "AUTH" SP sasl-mech [SP initial-response]
#   sasl-mech = 1*20(UPPER-ALPHA / DIGIT / "-" / "_") (RFC 4422; case-insensitive here)
#   initial-response = base64 / "="
_ARGUMENT = re.compile(r"([A-Za-z0-9_-]{1,20})(?: +(\S+))? *")
_USERNAME: Final = R.auth_challenge("VXNlcm5hbWU6")  # base64 "Username:"
_PASSWORD: Final = R.auth_challenge("UGFzc3dvcmQ6")  # base64 "Password:"
_EMPTY: Final = R.auth_challenge("")
_STARTTLS: Final = StartTls()


class Credentials(NamedTuple):
    """What a complete exchange yields; ``authz`` is ``authc`` when the client gave none."""

    authz: str
    authc: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(authz={self.authz!r}, authc={self.authc!r}, password=...)"


Step = Reply | Credentials
"""One step of an exchange: a 334 challenge (go on), another Reply (it ended), or the
credentials (it is complete)."""


class SaslExchange:
    """One AUTH exchange. O(length of the response) per step."""

    __slots__ = ("_user", "mechanism")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self._user: str | None = None  # LOGIN: the user name, once given

    @classmethod
    def begin(cls, argument: str) -> tuple[SaslExchange, Step]:
        """The exchange for ``AUTH <argument>`` and its first step."""
        m = _ARGUMENT.fullmatch(argument)
        if m is None:
            return cls(""), R.AUTH_SYNTAX
        mechanism = m[1].upper()
        exchange = cls(mechanism)
        if mechanism not in MECHANISMS:
            return exchange, R.AUTH_MECHANISM_UNKNOWN
        initial = m[2]
        if initial is None:
            return exchange, _EMPTY if mechanism == "PLAIN" else _USERNAME
        # RFC 4954 §4: "=" is an initial response of zero length.
        return exchange, exchange.respond(b"" if initial == "=" else initial.encode())

    def respond(self, line: bytes) -> Step:
        """The next step for one response line (without its CRLF)."""
        if line.strip(b" ") == b"*":
            return R.AUTH_CANCELLED
        try:
            data = binascii.a2b_base64(line.strip(b" "), strict_mode=True)
        except (binascii.Error, ValueError):
            return R.AUTH_CANNOT_DECODE
        if self.mechanism == "PLAIN":
            return _plain(data)
        value = _text(data)
        if value is None or (self._user is None and not value):
            return R.AUTH_MALFORMED
        if self._user is None:
            self._user = value
            return _PASSWORD
        return Credentials(self._user, self._user, value)


class Security:
    """One session's STARTTLS and AUTH state (see the module docstring). O(1) per call, plus
    the length of an AUTH response."""

    __slots__ = ("_tls", "active", "authenticated", "exchange", "extensions", "offered", "pending")

    def __init__(self, tls: bool, extensions: tuple[str, ...]) -> None:
        """``tls``: the caller can do a TLS handshake. ``extensions``: the EHLO keywords
        without STARTTLS and AUTH."""
        self.offered = tls  # STARTTLS may be given now
        self.pending = False  # STARTTLS accepted, the handshake not done yet
        self.active = False  # TLS is up
        self.authenticated = False
        self.exchange: SaslExchange | None = None  # an AUTH exchange waiting for a response
        self.extensions = (*extensions, "STARTTLS") if tls else extensions
        self._tls = (*extensions, "AUTH " + " ".join(MECHANISMS))

    def command(self, verb: str, argument: str, helo: str | None) -> StartTls | Auth | Reply:
        """``STARTTLS`` or ``AUTH <argument>``; ``helo`` is the EHLO/HELO domain, if any."""
        if verb == "STARTTLS":
            if self.offered:
                return _STARTTLS
            return R.TLS_ALREADY_ACTIVE if self.active else R.STARTTLS_UNAVAILABLE
        if not self.active:
            return R.AUTH_ENCRYPTION_REQUIRED
        if self.authenticated:
            return R.AUTH_ALREADY
        if helo is None:
            return R.AUTH_NEED_EHLO
        return self._step(*SaslExchange.begin(argument))

    def response(self, line: bytes) -> Auth | Reply:
        """The next step of the exchange in progress for one response line."""
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            raise ValueError("no AUTH exchange is in progress")
        return self._step(exchange, exchange.respond(line))

    def _step(self, exchange: SaslExchange, step: Step) -> Auth | Reply:
        if isinstance(step, Credentials):
            return Auth(exchange.mechanism, *step)
        if step.code == 334:
            self.exchange = exchange
        return step

    def starttls_accepted(self) -> None:
        self.offered = False
        self.pending = True

    def established(self) -> None:
        """The handshake succeeded: AUTH is offered from now on."""
        self.pending = False
        self.active = True
        self.extensions = self._tls


def _text(data: bytes) -> str | None:
    """``data`` as UTF-8 of at most ``MAX_FIELD`` octets, without NUL; else None."""
    if len(data) > MAX_FIELD or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _plain(data: bytes) -> Step:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``."""
    parts = data.split(b"\0")
    if len(parts) != 3:
        return R.AUTH_MALFORMED
    authz, authc, password = (_text(p) for p in parts)
    if authz is None or not authc or password is None:
        return R.AUTH_MALFORMED
    return Credentials(authz or authc, authc, password)


def redact(line: bytes) -> bytes:
    """An ``AUTH`` command line without its initial response: ``AUTH <mechanism>``."""
    words = line.split(None, 2)
    return b" ".join(words[:2])


class AuthFailures:
    """Failed authentications per client IP in a sliding window (see the module docstring).
    O(limit) per call at most; memory O(max_clients * limit)."""

    __slots__ = ("_failures", "_max_clients", "limit", "window")

    def __init__(self, limit: int, window: float, max_clients: int = 65536) -> None:
        self.limit = limit
        self.window = window
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def blocked(self, ip: str, now: float) -> bool:
        """True while ``ip`` has ``limit`` failures within the last ``window`` seconds."""
        times = self._recent(ip, now)
        return times is not None and len(times) >= self.limit

    def retry_after(self, ip: str, now: float) -> float:
        """Seconds until ``ip`` is no longer blocked (0 when it is not)."""
        times = self._recent(ip, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def failed(self, ip: str, now: float) -> bool:
        """Count a failure of ``ip`` at ``now``; True when this one blocks it."""
        times = self._recent(ip, now)
        if times is None:
            times = deque(maxlen=self.limit)
        else:
            del self._failures[ip]  # re-inserted below: the dict is kept in recency order
        times.append(now)
        self._failures[ip] = times
        if len(self._failures) > self._max_clients:
            del self._failures[next(iter(self._failures))]
        return len(times) >= self.limit
