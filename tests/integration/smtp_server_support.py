"""The fake SmtpHandler and the clients of the kumoq.smtp.server tests (test_smtp_server*.py);
their ``handler`` and ``start`` fixtures are in tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Callable
from typing import Any

from kumoq.message import EnvelopeAddress
from kumoq.smtp.replies import Reply
from kumoq.smtp.server import ConnectionMeta

BODY = b"Subject: hello\r\n\r\nline one\r\n.leading dot\r\n"


class FakeHandler:
    """Records every call; behaviour is set per test through the attributes."""

    def __init__(self) -> None:
        self.is_ready = True
        self.extensions: list[str] | Reply | None = None
        self.mail_reply: Reply | None = None
        self.rcpt_reply: Reply | None = None
        self.data_reply = Reply(250, None, "OK ids=1")
        self.raise_in: dict[str, BaseException] = {}
        self.suspend = False
        self.data_gate: asyncio.Event | None = None
        self.calls: list[tuple[str, Any]] = []
        self.messages: list[tuple[EnvelopeAddress, list[EnvelopeAddress], bytes]] = []
        self.rejections: list[tuple[str, Reply]] = []
        self.conns: list[ConnectionMeta] = []
        self.passwords: dict[str, str] = {}  # auth_plain accepts these (authc -> password)

    def ready(self) -> bool:
        return self.is_ready

    async def _enter(self, name: str, conn: ConnectionMeta, arg: Any) -> None:
        self.calls.append((name, arg))
        if conn not in self.conns:
            self.conns.append(conn)
        if self.suspend:
            await asyncio.sleep(0.001)
        exc = self.raise_in.get(name)
        if exc is not None:
            raise exc

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        await self._enter("ehlo", conn, (domain, extensions))
        return self.extensions

    async def auth_plain(self, conn: ConnectionMeta, authz: str, authc: str, password: str) -> bool:
        await self._enter("auth_plain", conn, (authz, authc))
        if self.passwords.get(authc) != password:
            return False
        conn["authz_id"], conn["authn_id"] = authz, authc
        return True

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        await self._enter("mail_from", conn, sender)
        return self.mail_reply

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        await self._enter("rcpt_to", conn, recipient)
        return self.rcpt_reply

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        await self._enter("data", conn, len(data))
        if self.data_gate is not None:
            await self.data_gate.wait()
        self.messages.append((sender, recipients, data))
        return self.data_reply

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        self.rejections.append((command, reply))


Start = Callable[..., Any]


def smtplib_send(port: int, rcpts: list[str], body: bytes = BODY) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("sender@example.com", rcpts, body)


class RawClient:
    """A blocking line-oriented client for exact-bytes tests (run it in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One complete (possibly multi-line) reply, as text."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def at_eof(self) -> bool:
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


async def raw(port: int, script: Callable[[RawClient], Any]) -> Any:
    def run() -> Any:
        client = RawClient(port)
        try:
            return script(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)
