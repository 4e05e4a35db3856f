"""What the admin API and CLI end-to-end tests share: a policy relaying to an aiosmtpd sink with
the HTTP listener on, the sink (which refuses local parts containing ``tempfail`` with 450 and
``permfail`` with 550 until told otherwise), and a JSON-over-HTTP call helper.

The policy's queues retry after an hour, so a message that waits was made to wait by the test
(a suspension, a refusal), and one that goes was sent by an admin call, not by its retry timer.
Bounces and expirations are kept as dead letters for 7 days (``dead_letter_retention``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.policies import TENANT_FROM_HEADERS

A = "/api/admin"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"daniel:tiger").decode()}


class SwitchSink:
    """An SMTP sink; ``refuse`` maps a local-part substring to the reply that refuses it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse = {
            "tempfail": "450 4.2.0 try again later",
            "permfail": "550 5.1.1 no such user",
        }
        self.port = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:  # fmt: skip
        for key, reply in list(self.refuse.items()):
            if key in address.partition("@")[0]:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self._lock:
            self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos),
                                  envelope.content))  # fmt: skip
        return "250 2.0.0 queued"

    def recipients(self) -> list[str]:
        with self._lock:
            return [rcpt for _, rcpts, _ in self.messages for rcpt in rcpts]

    @property
    def ready_queue(self) -> str:
        """The name of the ready queue that delivers to this sink."""
        return f"unspecified->mx_list:127.0.0.1:{self.port}@smtp_client"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_sink() -> Iterator[SwitchSink]:
    """A SwitchSink on 127.0.0.1, stopped at the end."""
    handler = SwitchSink()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


def admin_policy(sink_port: int, http: str = "") -> str:
    """SMTP in, HTTP on (``http`` adds keys to start_http_listener), relay to the sink."""
    return f"""
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', {http} }}
  kumo.define_spool {{ name = 'data', path = './var/spool/data' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool/meta' }}
  kumo.configure_local_logs {{
    log_dir = './var/log', max_segment_duration = '1s', meta = {{ '*' }},
  }}
end)
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'daniel' and password == 'tiger'
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '1h',
    dead_letter_retention = '7 days',
    protocol = {{ smtp = {{ mx_list = {{ '127.0.0.1:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path {{ enable_tls = 'Disabled', prohibited_hosts = {{}} }}
end)
{TENANT_FROM_HEADERS}
"""


def call(
    daemon: KumoqDaemon,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> tuple[int, Any]:
    """One request; ``body`` is JSON-encoded unless it is bytes. Returns the status and the
    decoded JSON answer."""
    host, port = daemon.listeners["http"]
    source_address = (source, 0) if source else None
    conn = http.client.HTTPConnection(host, port, timeout=60, source_address=source_address)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
        response = conn.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), raw
        return response.status, json.loads(raw)
    finally:
        conn.close()


def ok(daemon: KumoqDaemon, method: str, path: str, body: Any = None) -> Any:
    """A request that must succeed; its JSON answer."""
    status, answer = call(daemon, method, path, body)
    assert status == 200, answer
    return answer


def endpoint(daemon: KumoqDaemon) -> str:
    host, port = daemon.listeners["http"]
    return f"http://{host}:{port}"


def reception_ids(daemon: KumoqDaemon, n: int) -> dict[str, str]:
    """Recipient -> spool id, from the first ``n`` Reception records."""
    return {r["recipient"]: r["id"] for r in daemon.wait_for_records("Reception", n)}


def records_for(daemon: KumoqDaemon, kind: str, recipient: str) -> list[dict[str, Any]]:
    return [r for r in daemon.records(kind) if r["recipient"] == recipient]


def wait_for_record(
    daemon: KumoqDaemon, kind: str, recipient: str, timeout: float = 15.0
) -> dict[str, Any]:
    found = daemon.wait_for(lambda: records_for(daemon, kind, recipient), timeout,
                            what=f"a {kind} record for {recipient}")  # fmt: skip
    return found[0]


def delivered(daemon: KumoqDaemon, sink: SwitchSink, recipient: str, timeout: float = 15.0) -> None:
    daemon.wait_for(lambda: recipient in sink.recipients(), timeout,
                    what=f"{recipient} delivered to the sink")  # fmt: skip


def campaign_headers(campaign: str, tenant: str) -> dict[str, str]:
    return {"X-Campaign": campaign, "X-Tenant": tenant}
