"""The caller-side helpers of the ServerSession tests (test_smtp_session*.py).

``Peer`` plays the caller: it feeds bytes, answers every pending event through ``decide``
(accept by default) and collects the bytes the session asks to write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    NEED_DATA,
    CommandAnswered,
    ConnectionClosed,
    Event,
    MessageData,
    ProtocolError,
    ServerSession,
)

Decide = Callable[[Event], Reply | None]


def config(**kw: Any) -> EsmtpListenerConfig:
    return EsmtpListenerConfig.from_mapping({"hostname": "mx.test", **kw})


class Peer:
    def __init__(self, decide: Decide | None = None, **kw: Any) -> None:
        self.session = ServerSession(config(**kw))
        self.decide = decide or (lambda event: None)
        self.events: list[Event] = []
        self.out = bytearray(self.session.greeting())

    def send(self, data: bytes) -> list[str]:
        """Feed ``data``, answer everything, return the reply lines produced."""
        start = len(self.out)
        self.session.receive_data(data)
        while True:
            event = self.session.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            match event:
                case CommandAnswered() | ProtocolError():
                    self.out += event.reply.to_bytes()
                case ConnectionClosed():
                    break
                case _:
                    reply = self.decide(event)
                    self.out += self.session.accept() if reply is None else self.session.send(reply)
        return bytes(self.out[start:]).decode("utf-8", "replace").splitlines()

    def codes(self, data: bytes) -> list[str]:
        """Each reply's code and enhanced code, as ``"250 2.1.0"`` (or ``"354"``)."""
        out = []
        for line in self.send(data):
            if line[3:4] == "-":
                continue
            words = line.split(" ")
            enhanced = len(words) > 1 and words[1][:1] in "245" and words[1].count(".") == 2
            out.append(" ".join(words[:2]) if enhanced else words[0])
        return out

    def messages(self) -> list[MessageData]:
        return [e for e in self.events if isinstance(e, MessageData)]


def transaction(body: bytes, rcpts: int = 1) -> bytes:
    rcpt = b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(rcpts))
    return b"MAIL FROM:<s@example.com>\r\n" + rcpt + b"DATA\r\n" + body
