"""kumoq.dsn: RFC 3464 delivery status reports as KumoMTA's Report data."""

from __future__ import annotations

import pytest

from kumoq.dsn import parse_report
from kumoq.mime_headers import MimeError

REPORT = (
    b"From: MAILER-DAEMON@mx.example.org\r\n"
    b"To: sender@example.com\r\n"
    b"Subject: Delivery Status Notification (Failure)\r\n"
    b"Mime-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
    b'\tboundary="RPT"\r\n'
    b"\r\n"
    b"--RPT\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Your message could not be delivered.\r\n"
    b"--RPT\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.example.org\r\n"
    b"Arrival-Date: Mon, 6 May 2024 10:00:00 -0400\r\n"
    b"X-Postfix-Queue-ID: 4Vxyz\r\n"
    b"\r\n"
    b"Original-Recipient: rfc822;ann@example.net\r\n"
    b"Final-Recipient: rfc822; <ann@example.net>\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1 (bad destination mailbox)\r\n"
    b"Remote-MTA: dns; mail.example.net\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
    b"Last-Attempt-Date: Mon, 6 May 2024 10:05:00 -0400\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822;bob@example.net\r\n"
    b"Action: delayed\r\n"
    b"Status: 4.4.7\r\n"
    b"Will-Retry-Until: Tue, 7 May 2024 10:00:00 +0000\r\n"
    b"--RPT\r\n"
    b"Content-Type: text/rfc822-headers\r\n"
    b"\r\n"
    b"Subject: hello\r\n"
    b"--RPT--\r\n"
)


def test_a_report_as_kumomta_shapes_it() -> None:
    assert parse_report(REPORT) == {
        "per_message": {
            "reporting_mta": {"mta_type": "dns", "name": "mx.example.org"},
            "arrival_date": "2024-05-06T14:00:00Z",
            "extensions": {"x-postfix-queue-id": ["4Vxyz"]},
        },
        "per_recipient": [
            {
                "final_recipient": {"recipient_type": "rfc822", "recipient": "ann@example.net"},
                "original_recipient": {"recipient_type": "rfc822", "recipient": "ann@example.net"},
                "action": "failed",
                "status": {
                    "class": 5,
                    "subject": 1,
                    "detail": 1,
                    "comment": "(bad destination mailbox)",
                },
                "remote_mta": {"mta_type": "dns", "name": "mail.example.net"},
                "diagnostic_code": {
                    "diagnostic_type": "smtp",
                    "diagnostic": "550 5.1.1 no such user",
                },
                "last_attempt_date": "2024-05-06T14:05:00Z",
                "extensions": {},
            },
            {
                "final_recipient": {"recipient_type": "rfc822", "recipient": "bob@example.net"},
                "action": "delayed",
                "status": {"class": 4, "subject": 4, "detail": 7},
                "will_retry_until": "2024-05-07T10:00:00Z",
                "extensions": {},
            },
        ],
        "original_message": "Subject: hello\n",
    }


def test_a_message_that_is_not_a_report_is_none() -> None:
    assert parse_report(b"Subject: hi\r\n\r\nhello\r\n") is None
    assert parse_report(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n") is None


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b"Content-Type: message/delivery-status", b"Content-Type: text/x-other", "part missing"),
        (b"Reporting-MTA: dns; mx.example.org\r\n", b"", "reporting-mta is not present"),
        (b"Action: delayed", b"Action: exploded", "invalid action type"),
        (b"Status: 4.4.7", b"Status: four", "invalid Status"),
        (b"Action: delayed", b"Action: delayed\r\nAction: failed", "only a single value"),
        (b"Final-Recipient: rfc822;bob", b"Final-Recipient: bob", "recipient-type"),
    ],
)
def test_malformed_reports_raise(old: bytes, new: bytes, match: str) -> None:
    with pytest.raises(MimeError, match=match):
        parse_report(REPORT.replace(old, new))
