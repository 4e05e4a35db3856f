"""The exceptions kumoq raises, one class per condition a caller handles differently.

This module imports nothing from kumoq. The tree::

    KumoqError
    ├── ConfigError            a config table (make_*, start_*, define_*) has a bad key or value;
    │                          the policy loader turns it into a PolicyError naming file and line
    ├── AddressError           an envelope address does not parse (SMTP answers 501/553)
    ├── QueueNameError         a message's queue name cannot be computed or parsed
    ├── PolicyError            the Lua policy failed to load or an event handler raised;
    │                          startup exits 1, reception answers 421 4.3.0, delivery transfails
    │   └── RejectError        kumo.reject(code, message) was called; the caller turns it into
    │                          the SMTP reply / transient failure / bounce the context calls for
    ├── PolicyWouldBlock       a synchronous policy call needs a DNS answer not cached yet; the
    │                          caller awaits ``wait()`` and calls the handler again
    ├── SpoolError             the spool could not store, load or remove an entry
    │   ├── SpoolLockedError   another instance holds the spool lock; startup exits 1
    │   └── SpoolCorruptError  an entry's data is missing or empty; the manager removes it
    │       └── SpoolRecordError  a meta record fails validation (names the field);
    │                          enumeration quarantines it and logs
    ├── AdminRequestError      an admin request cannot be carried out (HTTP 4xx)
    ├── ListenerError          a listener cannot bind its address; startup exits 1
    ├── DeliveryError          a deliverer failed in a way that is a transient failure
    └── SmtpProtocolError      a peer broke the SMTP grammar or sequence
        ├── LocalProtocolError   we were asked to send something illegal (a bug)
        └── RemoteProtocolError  the peer sent something illegal; carries the reply to send

Expected outcomes (throttled, queue full, nothing due) are return values, never exceptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = [
    "AddressError",
    "AdminRequestError",
    "ConfigError",
    "DeliveryError",
    "KumoqError",
    "ListenerError",
    "LocalProtocolError",
    "PolicyError",
    "PolicyWouldBlock",
    "QueueNameError",
    "RejectError",
    "RemoteProtocolError",
    "SmtpProtocolError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolLockedError",
    "SpoolRecordError",
]


class KumoqError(Exception):
    """Root of every kumoq exception."""


class ConfigError(KumoqError, ValueError):
    """A configuration table has an unknown key or a value that does not parse.

    Raised by every ``from_mapping()``; the message names the key and quotes the value.
    """


class AddressError(KumoqError, ValueError):
    """An envelope address (``user@domain``) does not parse."""


class QueueNameError(KumoqError, ValueError):
    """A queue name cannot be computed (no recipient domain, non-string ``queue`` meta)."""


class PolicyError(KumoqError):
    """The Lua policy failed: a syntax error, a runtime error, or a handler that raised.

    ``location`` is ``"file:line"`` when Lua reported one.
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class RejectError(PolicyError):
    """``kumo.reject(code, message)`` was called inside an event handler.

    ``disconnect`` is True when the connection must be dropped after the reply (a 421).
    """

    #: ``kumo.disconnect(..., 'FollowWith421')`` with a code other than 421: the reply is
    #: followed by ``421 <host> disconnecting due to previous error``, then the hang-up.
    follow_with_421: bool = False

    def __init__(self, code: int, message: str, *, disconnect: bool = False) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.reply_text = message
        self.disconnect = disconnect or code == 421

    @classmethod
    def from_lua(cls, code: int, message: str, how: object) -> RejectError:
        """The error for ``kumo.reject``/``kumo.disconnect``: ``how`` is ``If421``,
        ``ForceDisconnect`` or ``FollowWith421`` (both of which disconnect)."""
        exc = cls(code, message, disconnect=how != "If421")
        exc.follow_with_421 = how == "FollowWith421" and code != 421
        return exc


class PolicyWouldBlock(KumoqError):
    """A synchronous call of the policy needs an answer that is not at hand yet (a DNS answer
    for ``kumo.dns.lookup_mx`` that is not cached).

    Not a PolicyError: nothing is wrong with the policy. Await ``wait()`` (it fetches the
    answer into the cache), then call the handler again.
    """

    def __init__(self, what: str, wait: Callable[[], Awaitable[None]]) -> None:
        super().__init__(f"the policy is waiting for {what}")
        self.wait = wait


class SpoolError(KumoqError):
    """A spool operation failed; reception answers 451 and nothing is acknowledged."""


class SpoolLockedError(SpoolError):
    """Another process holds the spool lock; startup exits 1 with this message."""


class SpoolCorruptError(SpoolError):
    """A spool entry is unusable: its data is missing or empty, or (``SpoolRecordError``) its
    meta record does not validate."""


class SpoolRecordError(SpoolCorruptError):
    """A meta record read back from the spool is not a valid message record.

    ``field`` names what is wrong: ``json`` (not JSON), ``record`` (not a JSON object), or the
    record's key (``sender``, ``recipient``, ``meta``, ``schedule``, ``num_attempts``, ``due``,
    ``created``). It is a small fixed set, fit for a metric label. The daemon quarantines such a
    record at enumeration instead of loading it.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


class ListenerError(KumoqError):
    """A listener cannot bind its address (in use, not local); startup exits 1."""


class DeliveryError(KumoqError):
    """A delivery attempt failed transiently (for example a maildir write error)."""


class SmtpProtocolError(KumoqError):
    """The SMTP grammar or command sequence was broken."""

    def __init__(self, message: str, *, reply_hint: tuple[int, str] = (500, "5.5.2")) -> None:
        super().__init__(message)
        self.reply_hint = reply_hint


class LocalProtocolError(SmtpProtocolError):
    """We tried to do something the protocol forbids in the current state (a bug)."""


class RemoteProtocolError(SmtpProtocolError):
    """The peer sent something illegal; ``reply_hint`` is the (code, enhanced) to answer."""


class AdminRequestError(KumoqError, ValueError):
    """An admin request that cannot be carried out as asked (a bad cursor, an unknown rule);
    the HTTP API answers it with ``status`` and the message as JSON."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
