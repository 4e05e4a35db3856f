"""Reading a spool meta record back into a ``Message``: every field checked, fast.

The meta record is KumoMTA's JSON (``sender``, ``recipient``, ``meta``, ``schedule``) plus
kumoq's ``num_attempts``, ``due`` and ``last_response``, so that a restart keeps each message's
schedule (``Message.to_spool_meta`` writes it). ``message_from_spool_meta`` checks each field for
its type and range and raises ``SpoolRecordError`` naming the bad one, so one damaged record
never stops a restart: the daemon quarantines it (docs/operations.md, "Spool quarantine").

A restart reads every record in the spool, a million on a full one, so this is the hot path of
start-up (docs/benchmarks.md, "Restart"): ``spooled_message`` parses the JSON, builds the
message and computes its queue name once (orjson parses the JSON: a quarter of the stdlib's
cost), shares the parsed sender between messages, and leaves
``created`` to be read from the spool id when first asked.

Pure: imports kumoq.errors and kumoq.message.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from kumoq.errors import AddressError, QueueNameError, SpoolRecordError
from kumoq.message import EnvelopeAddress, Message

__all__ = ["message_from_spool_bytes", "message_from_spool_meta", "spooled_message"]


def message_from_spool_bytes(spool_id: str, raw: bytes) -> Message:
    """``message_from_spool_meta`` of a meta record as stored: JSON bytes (UTF-8, as written).

    Raises SpoolRecordError (field ``json``) when ``raw`` is not JSON text.
    """
    return spooled_message(spool_id, raw)[0]


def message_from_spool_meta(spool_id: str, record: object) -> Message:
    """Rebuild a message (without its data) from a decoded meta record.

    Every field is checked for its type and range: ``sender`` an address (``""`` is the null
    sender), ``recipient`` an address or a non-empty list of them, ``meta`` an object,
    ``schedule`` an object or null, ``num_attempts`` an integer from 0 to 65535, ``due`` and
    ``created`` null or unix times (finite, from 1970 to 9999); the queue name must be
    computable. ``meta``, ``schedule``, ``num_attempts``, ``due`` and ``created`` may be
    absent (KumoMTA writes no ``num_attempts``, ``due`` or ``created``). Raises
    SpoolRecordError naming the field. O(size of the record).
    """
    return _from_record(spool_id, record, copy_meta=True)[0]


def spooled_message(spool_id: str, raw: bytes) -> tuple[Message, str]:
    """The message of a meta record as stored, and its queue name (computed once: a
    restart re-queues a million of them). Checks as ``message_from_spool_meta``; raises
    SpoolRecordError naming the field, ``json`` when ``raw`` is not JSON text."""
    try:
        record = orjson.loads(raw)  # strict RFC 8259: no NaN, UTF-8 only, as kumoq writes
    except ValueError as exc:  # orjson.JSONDecodeError
        raise SpoolRecordError("json", f"not a JSON text: {exc}") from None
    return _from_record(spool_id, record, copy_meta=False)


def _from_record(spool_id: str, record: object, *, copy_meta: bool) -> tuple[Message, str]:
    if not isinstance(record, dict):
        raise SpoolRecordError("record", f"expected a JSON object, got {_kind(record)}")
    get = record.get
    sender = _sender(get("sender", _MISSING))
    rcpt = get("recipient", _MISSING)
    if isinstance(rcpt, list):
        if not rcpt:
            raise SpoolRecordError("recipient", "expected at least one address, got []")
        recipients = [_address("recipient", item) for item in rcpt]
    else:
        recipients = [_address("recipient", rcpt)]
    for r in recipients:
        if not r.domain:
            raise SpoolRecordError(
                "recipient", f"the null address is not a recipient: {_kind(rcpt)}"
            )
    meta = get("meta", _MISSING)
    if meta is _MISSING:
        meta = {}
    elif type(meta) is not dict:
        raise SpoolRecordError("meta", f"expected a JSON object, got {_kind(meta)}")
    elif copy_meta:
        meta = dict(meta)
    schedule = get("schedule")
    if schedule is not None and type(schedule) is not dict:
        raise SpoolRecordError("schedule", f"expected a JSON object or null, got {_kind(schedule)}")
    attempts = get("num_attempts")
    if attempts is None:
        attempts = 0
    elif type(attempts) is not int or not 0 <= attempts <= _MAX_ATTEMPTS:
        raise SpoolRecordError(
            "num_attempts", f"expected an integer from 0 to {_MAX_ATTEMPTS}, got {attempts!r}"
        )
    msg = Message(
        id=spool_id,
        sender=sender,
        recipients=recipients,
        meta=meta,
        schedule=schedule,
        num_attempts=attempts,
        due=_time(record, "due"),
        created=_time(record, "created") if "created" in record else None,
    )
    last = get("last_response")
    if isinstance(last, str):
        msg.last_response = last
    try:
        return msg, msg.queue_name()
    except QueueNameError as exc:
        raise SpoolRecordError("meta", f"no queue name can be computed: {exc}") from None


_MISSING: Final = object()
#: ``num_attempts`` is a u16 in KumoMTA.
_MAX_ATTEMPTS: Final = 2**16 - 1
#: 10000-01-01T00:00:00Z: the first instant ``datetime`` cannot represent.
_MAX_TIME: Final = 253_402_300_800.0


def _kind(value: object) -> str:
    if value is _MISSING:
        return "nothing (the key is missing)"
    return f"{type(value).__name__} {value!r}"[:120]


def _address(key: str, value: object) -> EnvelopeAddress:
    if not isinstance(value, str):
        raise SpoolRecordError(key, f"expected an address string, got {_kind(value)}")
    try:
        return EnvelopeAddress.parse(value)
    except AddressError as exc:
        raise SpoolRecordError(key, str(exc)) from None


#: Parsed senders by their text: a spool holds many messages from few senders. Addresses are
#: immutable, so one object serves them all; cleared when it grows past _SENDER_CACHE.
_senders: dict[str, EnvelopeAddress] = {}
_SENDER_CACHE: Final = 4096


def _sender(value: object) -> EnvelopeAddress:
    if type(value) is not str:
        return _address("sender", value)  # raises
    address = _senders.get(value)
    if address is None:
        address = _address("sender", value)
        if len(_senders) >= _SENDER_CACHE:
            _senders.clear()
        _senders[value] = address
    return address


def _time(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if type(value) is float and 0.0 <= value < _MAX_TIME:  # the usual case, checked at once
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpoolRecordError(key, f"expected a unix time or null, got {_kind(value)}")
    if not 0.0 <= value < _MAX_TIME:  # False for NaN too
        raise SpoolRecordError(
            key, f"expected a unix time from 0 to {_MAX_TIME:.0f} (year 10000), got {value!r}"
        )
    return float(value)
