"""RFC 3464 delivery status notifications, parsed for ``msg:parse_rfc3464()``.

``parse_report(data)`` returns None when the message is not a ``multipart/report``, raises
MimeError when it is one but its ``message/delivery-status`` part is missing or malformed,
and otherwise returns KumoMTA's ``Report`` as plain data::

    {"per_message": {"reporting_mta": {"mta_type": "dns", "name": "cs.utk.edu"},
                     "arrival_date": "1994-07-07T21:15:49Z", "extensions": {}},
     "per_recipient": [{"final_recipient": {"recipient_type": "rfc822",
                                            "recipient": "louisl@larry.slip.umd.edu"},
                        "action": "failed",
                        "status": {"class": 4, "subject": 0, "detail": 0},
                        "diagnostic_code": {"diagnostic_type": "smtp",
                                            "diagnostic": "426 connection timed out"},
                        "extensions": {}}],
     "original_message": "..."}

Absent optional fields are left out (nil in Lua). Fields the RFC defines but KumoMTA does not
name go into ``extensions`` (lower-case name to a list of values). Dates are RFC 3339 in UTC.

Pure (L0): imports kumoq.mime and kumoq.mime_headers; no IO.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, Final

from kumoq.mime import MimePart
from kumoq.mime_headers import MimeError, parse_header_block, parse_rfc2822_date

__all__ = ["parse_report"]

_ACTIONS: Final = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS_PARTS: Final = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL_PARTS: Final = frozenset({"message/rfc822", "text/rfc822-headers"})


def parse_report(data: bytes) -> dict[str, Any] | None:
    """The delivery status report in ``data`` (see the module docstring)."""
    mail = MimePart.parse(data)
    if mail.content_type() != "multipart/report" or mail.params("Content-Type") is None:
        return None
    original = None
    for part in mail.parts:
        if part.content_type() in _ORIGINAL_PARTS:
            original = part.raw_body.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    for part in mail.parts:
        if part.content_type() in _STATUS_PARTS:
            report = _parse_status(part)
            if original is not None:
                report["original_message"] = original
            return report
    raise MimeError("delivery-status part missing")


def _parse_status(part: MimePart) -> dict[str, Any]:
    body = part.body()
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    sections = [s for s in text.replace("\r\n", "\n").strip().split("\n\n") if s.strip()]
    if not sections:
        raise MimeError("missing per-message section")
    return {
        "per_message": _per_message(_fields(sections[0])),
        "per_recipient": [_per_recipient(_fields(s)) for s in sections[1:]],
    }


def _fields(section: str) -> dict[str, list[str]]:
    fields, _, _ = parse_header_block(section.strip("\n").encode("utf-8") + b"\n")
    out: dict[str, list[str]] = {}
    for f in fields:
        out.setdefault(f.name.lower(), []).append(f.unstructured)
    return out


def _single(fields: dict[str, list[str]], name: str, *, required: bool = False) -> str | None:
    values = fields.pop(name, None)
    if values is None:
        if required:
            raise MimeError(f"required header {name} is not present")
        return None
    if len(values) != 1:
        raise MimeError(f"header {name} should have only a single value")
    return values[0]


def _typed(value: str, what: str) -> dict[str, str]:
    """``type; value`` as ``{<what>_type: type, <what>: value}``."""
    kind, sep, rest = value.partition(";")
    if not sep:
        raise MimeError(f"failed to convert '{value}': expected '{what}-type; {what}'")
    return {f"{what}_type": kind.strip(), what: rest.strip()}


def _mta(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    kind, sep, name = value.partition(";")
    if not sep:
        raise MimeError(f"failed to convert '{value}': expected 'name-type; name'")
    return {"mta_type": kind.strip(), "name": name.strip()}


def _recipient(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    entry = _typed(value, "recipient")
    if entry["recipient_type"].lower() == "rfc822":
        address = entry["recipient"].strip()
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1]
        if "@" not in address:
            raise MimeError(f"failed to convert '{value}': invalid rfc822 address")
        entry["recipient"] = address
    return entry


def _date(value: str | None) -> str | None:
    if value is None:
        return None
    when = parse_rfc2822_date(value)
    if when is None:
        raise MimeError(f"failed to convert '{value}': not an RFC 2822 date")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(value: str) -> dict[str, Any]:
    code, _, comment = value.strip().partition(" ")
    pieces = code.split(".")
    if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
        raise MimeError(f"failed to convert '{value}': invalid Status")
    status: dict[str, Any] = dict(
        zip(("class", "subject", "detail"), map(int, pieces), strict=True)
    )
    if comment.strip():
        status["comment"] = comment.strip()
    return status


def _drop_none(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not None}


def _per_message(fields: dict[str, list[str]]) -> dict[str, Any]:
    reporting = _single(fields, "reporting-mta", required=True)
    assert reporting is not None
    return _drop_none(
        {
            "reporting_mta": _mta(reporting),
            "original_envelope_id": _single(fields, "original-envelope-id"),
            "dsn_gateway": _mta(_single(fields, "dsn-gateway")),
            "received_from_mta": _mta(_single(fields, "received-from-mta")),
            "arrival_date": _date(_single(fields, "arrival-date")),
            "extensions": fields,
        }
    )


def _per_recipient(fields: dict[str, list[str]]) -> dict[str, Any]:
    original = _recipient(_single(fields, "original-recipient"))
    final = _recipient(_single(fields, "final-recipient", required=True))
    remote = _mta(_single(fields, "remote-mta"))
    last_attempt = _date(_single(fields, "last-attempt-date"))
    retry_until = _date(_single(fields, "will-retry-until"))
    final_log_id = _single(fields, "final-log-id")
    action = (_single(fields, "action", required=True) or "").strip().lower()
    if action not in _ACTIONS:
        raise MimeError(f"failed to convert '{action}': invalid action type {action}")
    status = _status(_single(fields, "status", required=True) or "")
    diagnostic = _single(fields, "diagnostic-code")
    return _drop_none(
        {
            "final_recipient": final,
            "action": action,
            "status": status,
            "original_recipient": original,
            "remote_mta": remote,
            "diagnostic_code": _typed(diagnostic, "diagnostic") if diagnostic else None,
            "last_attempt_date": last_attempt,
            "final_log_id": final_log_id,
            "will_retry_until": retry_until,
            "extensions": fields,
        }
    )
