"""The message model: spool ids, envelope addresses, queue names and the Message itself.

A ``Message`` is one recipient's copy of a received transaction (KumoMTA's ``BifurcateAlways``).
Its meta is a plain JSON-able dict; its data are the RFC 5322 bytes, which may be ``None`` while
the message waits in a scheduled queue (loaded again from the spool when needed).

The messages of one transaction share one body (copy on write): each holds its own short
prefix (the ``Received:`` header) and a reference to the transaction's body bytes, so a
1 MiB message to 200 recipients holds 1 MiB, not 200. Reading ``data`` builds the whole bytes
for the caller (a transient copy; ``data_parts``, ``size``, ``header_data`` and ``has_data``
read without one); assigning ``data`` gives that message bytes of its own and leaves the
others alone.

The spool's meta record is KumoMTA's JSON (``sender``, ``recipient``, ``meta``, ``schedule``)
plus kumoq's ``num_attempts`` and ``due`` so that a restart keeps each message's schedule
(``Message.to_spool_meta``); ``kumoq.spool_record`` reads it back.

Pure: imports only kumoq.errors; time comes in as arguments.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Final, final

from kumoq.errors import AddressError, QueueNameError

__all__ = [
    "DEFAULT_PRIORITY",
    "NULL_QUEUE",
    "EnvelopeAddress",
    "Message",
    "QueueNameParts",
    "compute_queue_name",
    "new_session_id",
    "new_spool_id",
    "parse_queue_name",
    "priority_of",
    "spool_id_created",
]

NULL_QUEUE: Final = "null"

# UUIDv1 timestamps count 100 ns intervals since 1582-10-15.
_UUID_EPOCH_OFFSET: Final = 0x01B21DD213814000
_NODE: Final = int.from_bytes(os.urandom(6), "big") | 0x010000000000  # multicast bit: random node
_clock_seq = int.from_bytes(os.urandom(2), "big") & 0x3FFF
_last_ts = 0


def new_spool_id(now: float) -> str:
    """A new time-ordered spool id: a UUIDv1 for ``now`` as 32 lowercase hex digits.

    Ids made in the same process are unique even when ``now`` repeats (the 100 ns counter is
    bumped), so ``spool_id_created`` is exact to within microseconds.
    """
    global _last_ts
    ts = int(now * 10_000_000) + _UUID_EPOCH_OFFSET
    if ts <= _last_ts:
        ts = _last_ts + 1
    _last_ts = ts
    time_low = ts & 0xFFFFFFFF
    time_mid = (ts >> 32) & 0xFFFF
    time_hi_version = ((ts >> 48) & 0x0FFF) | 0x1000
    seq = _clock_seq | 0x8000
    return f"{time_low:08x}{time_mid:04x}{time_hi_version:04x}{seq:04x}{_NODE:012x}"


def new_session_id() -> str:
    """A random (version 4) UUID as 32 hex digits, without ``uuid.uuid4()``'s ``os.urandom``
    call (a syscall that releases the GIL, costly while other threads are busy)."""
    n = random.getrandbits(128)
    n = (n & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    return f"{n:032x}"


def spool_id_created(spool_id: str) -> float:
    """The creation time (unix seconds) encoded in a spool id."""
    try:
        if len(spool_id) != 32:
            raise ValueError
        ts = (
            (int(spool_id[13:16], 16) << 48)
            | (int(spool_id[8:12], 16) << 32)
            | int(spool_id[0:8], 16)
        )
    except ValueError:
        raise QueueNameError(f"not a spool id: {spool_id!r}") from None
    return (ts - _UUID_EPOCH_OFFSET) / 10_000_000


@final
@dataclass(frozen=True, slots=True)
class EnvelopeAddress:
    """An SMTP envelope address. The null sender ``<>`` has an empty local part and domain."""

    local_part: str
    domain: str

    @classmethod
    def parse(cls, text: str) -> EnvelopeAddress:
        """Parse ``user@domain`` (brackets optional); ``""`` or ``"<>"`` is the null sender."""
        text = text.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        if text == "":
            return NULL_SENDER
        local, sep, domain = text.rpartition("@")
        if not sep or not local or not domain:
            raise AddressError(f"invalid address {text!r}: expected user@domain")
        return cls(local, domain)

    @property
    def is_null(self) -> bool:
        return not self.local_part and not self.domain

    @property
    def user(self) -> str:
        return self.local_part

    @property
    def email(self) -> str:
        return f"{self.local_part}@{self.domain}" if not self.is_null else ""

    def __str__(self) -> str:
        return self.email


NULL_SENDER: Final = EnvelopeAddress("", "")


@dataclass(frozen=True, slots=True)
class QueueNameParts:
    """The parsed parts of a scheduled queue name (reference §1.4)."""

    domain: str
    tenant: str | None = None
    campaign: str | None = None
    routing_domain: str | None = None


def compute_queue_name(
    domain: str, *, tenant: str | None, campaign: str | None, routing_domain: str | None
) -> str:
    """Format ``campaign:tenant@domain!routing_domain`` with absent parts left out (§1.4)."""
    name = domain.lower()
    if routing_domain:
        name = f"{name}!{routing_domain}"
    if tenant is not None or campaign is not None:
        prefix = tenant or ""
        if campaign is not None:
            prefix = f"{campaign}:{prefix}"
        name = f"{prefix}@{name}"
    return name


def parse_queue_name(name: str) -> QueueNameParts:
    """Split a queue name back into its parts, as KumoMTA's ``queue_name.rs`` does."""
    tenant = campaign = None
    prefix, sep, rest = name.partition("@")
    if not sep:
        rest = name
    else:
        camp, colon, ten = prefix.partition(":")
        if colon:
            campaign, tenant = camp, ten
        else:
            tenant = prefix
    domain, bang, routing = rest.partition("!")
    return QueueNameParts(
        domain=domain,
        tenant=tenant,
        campaign=campaign,
        routing_domain=routing if bang else None,
    )


DEFAULT_PRIORITY: Final = 1


def priority_of(msg: Message) -> int:
    """The ``priority`` meta (a kumoq extension: 0 low, 1 normal, 2 high, 3 critical), or 1 when
    absent or not one of those integers."""
    value = msg.meta.get("priority", DEFAULT_PRIORITY)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    return DEFAULT_PRIORITY


@final
class Message:
    """One message: envelope, meta, data and its place in the retry schedule.

    ``due`` is the unix time of the next attempt (``None``: due now); ``num_attempts`` counts
    attempts made so far. Both are persisted in the spool meta record (a kumoq extension).

    ``shared_body``: bytes that follow ``data`` and that other messages hold too (never
    copied); the message's data are then ``data + shared_body`` until something assigns
    ``data``.
    """

    __slots__ = (
        "_created",
        "_own",
        "_shared",
        "due",
        "id",
        "last_response",
        "meta",
        "num_attempts",
        "recipients",
        "schedule",
        "sender",
        "state",
    )

    def __init__(
        self,
        *,
        id: str,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        meta: dict[str, Any] | None = None,
        data: bytes | None = None,
        schedule: dict[str, Any] | None = None,
        num_attempts: int = 0,
        due: float | None = None,
        created: float | None = None,
        shared_body: bytes | None = None,
    ) -> None:
        self.id = id
        self.sender = sender
        self.recipients = recipients
        self.meta: dict[str, Any] = meta if meta is not None else {}
        # The data are _own, followed by _shared when it is not None (then _own is not None).
        self._own: bytes | None = data
        self._shared: bytes | None = None
        if shared_body is not None:
            self._own = data or b""
            self._shared = shared_body
        self.schedule = schedule
        self.num_attempts = num_attempts
        self.due = due
        self._created = created  # None: read from the id when first asked (spool_id_created)
        #: the last transient failure's response, one line (persisted with the schedule)
        self.last_response: str | None = None
        #: why it waits now: ``(state, detail, until)`` set by the scheduler as it moves
        #: (``scheduled``, ``rate_throttled``, ``in_flight``, ``policy_failed``, ``dns_wait``);
        #: read by the admin API's inspect-message. Not persisted.
        self.state: tuple[str, str, float | None] | None = None

    @property
    def created(self) -> float:
        """When the message was received (unix seconds): the meta's ``created``, else the time
        in its spool id, computed on first use (a restart re-queues many that never ask)."""
        created = self._created
        if created is None:
            created = self._created = spool_id_created(self.id)
        return created

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.sender} -> {[str(r) for r in self.recipients]}>"

    @property
    def data(self) -> bytes | None:
        """The message bytes, or None when they are not loaded.

        A message that shares its body builds them at each read: a copy the caller owns,
        O(size). Prefer ``has_data``, ``size``, ``data_parts`` or ``header_data`` when they
        suffice."""
        shared = self._shared
        if shared is None:
            return self._own
        return self._own + shared if self._own else shared

    @data.setter
    def data(self, value: bytes | None) -> None:
        """Give this message data of its own (the shared body, if any, is no longer used)."""
        self._own = value
        self._shared = None

    @property
    def has_data(self) -> bool:
        """True when the data are loaded. O(1)."""
        return self._own is not None

    @property
    def shares_body(self) -> bool:
        """True while the data are a prefix followed by a body other messages share."""
        return self._shared is not None

    @property
    def size(self) -> int:
        """``len(data)`` (0 when not loaded), without building the data. O(1)."""
        own = self._own
        return (len(own) if own is not None else 0) + len(self._shared or b"")

    def data_parts(self) -> tuple[bytes, ...] | None:
        """The data as pieces to write one after the other (no copy), or None when not
        loaded: ``(data,)``, or ``(prefix, shared body)``."""
        own, shared = self._own, self._shared
        if own is None:
            return None
        if shared is None:
            return (own,)
        return (own, shared) if own else (shared,)

    def prepend_data(self, field: bytes) -> None:
        """Put ``field`` (a whole header field) before the data; a shared body stays shared.
        O(len(prefix)). Raises ValueError when the data are not loaded."""
        if self._own is None:
            raise ValueError("the message data is not loaded")
        self._own = field + self._own

    def header_data(self) -> bytes | None:
        """Bytes that start with the whole header block, for ``kumoq.headers``' read
        functions; None when not loaded. A shared message gives its prefix and the shared
        body up to the first empty line (a copy of the header block only); any other gives
        its data as they are (no copy)."""
        own, shared = self._own, self._shared
        if shared is None:
            return own
        return (own or b"") + shared[: _header_end(shared)]

    @property
    def recipient(self) -> EnvelopeAddress:
        """The first recipient (every message made by reception has exactly one)."""
        return self.recipients[0]

    def queue_name(self) -> str:
        """The scheduled queue: meta ``queue`` if set, else built from the meta and recipient."""
        meta = self.meta
        queue = meta.get("queue")
        if queue is not None:
            if not isinstance(queue, str):
                raise QueueNameError(f"meta 'queue' must be a string, got {queue!r}")
            return queue
        if not self.recipients or not self.recipients[0].domain:
            raise QueueNameError("message has no recipient domain")
        tenant, campaign, routing = (
            meta.get("tenant"),
            meta.get("campaign"),
            meta.get("routing_domain"),
        )
        for key, value in (("tenant", tenant), ("campaign", campaign), ("routing_domain", routing)):
            if value is not None and not isinstance(value, str):
                raise QueueNameError(f"meta {key!r} must be a string, got {value!r}")
        return compute_queue_name(
            self.recipients[0].domain, tenant=tenant, campaign=campaign, routing_domain=routing
        )

    def to_spool_meta(self) -> dict[str, Any]:
        """The JSON-able meta record written to the ``meta`` spool."""
        recipients = [r.email for r in self.recipients]
        return {
            "sender": self.sender.email,
            "recipient": recipients[0] if len(recipients) == 1 else recipients,
            "meta": self.meta,
            "schedule": self.schedule,
            "num_attempts": self.num_attempts,
            "due": self.due,
            **({"last_response": self.last_response} if self.last_response else {}),
        }


def _header_end(data: bytes) -> int:
    """Where the first empty line of ``data`` starts (``len(data)`` if it has none).

    Every header field ends before the first empty line, so ``data[:_header_end(data)]``
    holds the whole header block whatever the prefix before it."""
    if data.startswith((b"\r\n", b"\n")):
        return 0
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, crlf if crlf >= 0 else len(data))
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) + 1 if ends else len(data)
