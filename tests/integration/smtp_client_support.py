"""The shared helpers of the kumoq.delivery.smtp client tests (test_smtp_client*.py): the egress
source and message body they use, and ``connect``, which opens a ``SmtpClientSession``."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

from kumoq.config.egress import EgressPathConfig, EgressSource
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.message import EnvelopeAddress, Message, new_spool_id

SOURCE = EgressSource(name="s1", source_address="127.0.0.1")
BODY = b"Subject: hi\r\n\r\nline\r\n.leading dot\r\n"


def path(**kw: Any) -> EgressPathConfig:
    return dataclasses.replace(EgressPathConfig(prohibited_hosts=()), **kw)


def message(*rcpts: str, sender: str = "from@example.com") -> Message:
    return Message(
        id=new_spool_id(0.0),
        sender=EnvelopeAddress.parse(sender),
        recipients=[EnvelopeAddress.parse(r) for r in rcpts],
        data=BODY,
    )


async def connect(port: int, tls_context: ssl.SSLContext | None = None, **kw: Any) -> Any:
    return await SmtpClientSession.connect(
        "localhost",
        "127.0.0.1",
        port,
        path=path(**kw),
        source=SOURCE,
        ehlo_domain="client.example",
        tls_context=tls_context,
    )
