"""The HTTP listener of a real ``kumoq serve``, through real HTTP (issue 11): liveness, the
injection API delivered to a maildir, its JSON errors, auth, gzip, bulk and the metrics.

Clients are ``http.client`` connections (the standard library under urllib); a client outside
``trusted_hosts`` binds to 127.0.0.2.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
import http.client
import json
import re
import socket
import threading
import time
from email.message import EmailMessage
from typing import Any

import pytest

from kumoq.testing.harness import KumoqDaemon
from tests.e2e.policies import MAILDIR_QUEUE

pytestmark = pytest.mark.integration

BASE = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', hostname = 'http.test', {http} }}
  kumo.define_spool {{ name = 'data', path = './var/spool/data', kind = '{kind}' }}
  kumo.define_spool {{ name = 'meta', path = './var/spool/meta', kind = '{kind}' }}
  kumo.configure_local_logs {{
    log_dir = './var/log', max_segment_duration = '1s', meta = {{ '*' }},
  }}
end)
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'daniel' and password == 'tiger'
end)
kumo.on('http_message_generated', function(msg, auth)
  if msg:recipient().user == 'unwanted' then kumo.reject(550, '5.7.1 not wanted here') end
  msg:set_meta('tenant', 'injected')
  msg:set_meta('auth_peer', auth.peer_address)
end)
"""


def http_policy(http: str = "", kind: str = "LocalDisk") -> str:
    return BASE.format(http=http, kind=kind) + MAILDIR_QUEUE


def call(
    daemon: KumoqDaemon,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    source: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], Any]:
    """One request; ``body`` is JSON-encoded unless it is bytes. Returns status, headers and
    the decoded JSON answer (the text when it is not JSON)."""
    host, port = daemon.listeners["http"]
    source_address = (source, 0) if source else None
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=source_address)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    if answer_headers.get("content-type", "").startswith("application/json"):
        return response.status, answer_headers, json.loads(raw)
    return response.status, answer_headers, raw.decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def inject(recipients: list[dict[str, Any]], content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "envelope_sender": "bounces@sender.example",
        "recipients": recipients,
        "content": content,
        **extra,
    }


def messages(daemon: KumoqDaemon) -> dict[str, EmailMessage]:
    """Delivered messages by their ``To:`` address."""
    out: dict[str, EmailMessage] = {}
    for path in daemon.maildir_files():
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out[str(msg["To"].addresses[0].addr_spec)] = msg
    return out


def test_liveness_and_a_raw_injection_with_substitutions_is_delivered(kumoq):
    daemon = kumoq(http_policy())
    assert call(daemon, "GET", "/api/check-liveness/v1")[::2] == (200, {"status": "OK"})
    request = inject(
        [
            {"email": "ann@example.com", "name": "Ann", "substitutions": {"code": "A-1"}},
            {"email": "bob@example.com", "name": "Bob", "metadata": {"segment": "vip"}},
            {"email": "unwanted@example.com"},
        ],
        "From: news@sender.example\nTo: {{ to_header }}\nSubject: {{ title }} for {{ name }}\n"
        "\nHello {{ name }}, your code is {{ code }}.\n",
        substitutions={"title": "Fall news", "code": "none yet"},
    )
    status, _, body = call(daemon, "POST", "/api/inject/v1", request)
    assert (status, body) == (
        200,
        {
            "success_count": 2,
            "fail_count": 1,
            "failed_recipients": ["unwanted@example.com"],
            "errors": ["unwanted@example.com: 550 5.7.1 not wanted here"],
        },
    )
    daemon.wait_for_maildir_count(2)
    delivered = messages(daemon)
    assert delivered["ann@example.com"]["Subject"] == "Fall news for Ann"
    assert delivered["ann@example.com"].get_content() == "Hello Ann, your code is A-1.\r\n"
    assert delivered["bob@example.com"].get_content() == "Hello Bob, your code is none yet.\r\n"
    assert delivered["bob@example.com"]["MIME-Version"] == "1.0"
    receptions = daemon.wait_for_records("Reception", 2)
    by_rcpt = {r["recipient"]: r for r in receptions}
    ann = by_rcpt["ann@example.com"]
    assert ann["reception_protocol"] == "HTTP"
    assert ann["queue"] == "injected@example.com"
    assert ann["sender"] == "bounces@sender.example"
    assert ann["peer_address"] == {"name": "", "addr": "127.0.0.1"}
    assert ann["meta"]["http_auth"] == "127.0.0.1"
    assert ann["meta"]["received_from"] == "127.0.0.1"
    assert ann["meta"]["hostname"] == "http.test"
    assert ann["meta"]["auth_peer"] == "127.0.0.1"
    assert by_rcpt["bob@example.com"]["meta"]["extra"] == {"segment": "vip"}


def test_the_builder_form_is_delivered_as_mime(kumoq):
    daemon = kumoq(http_policy())
    gif = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    request = inject(
        [{"email": "ann@example.com", "name": "Ann Example"}],
        {
            "subject": "Offer for {{ name }}",
            "from": {"email": "sales@sender.example", "name": "Sales"},
            "reply_to": {"email": "help@sender.example"},
            "headers": {"X-Campaign": "{{ campaign }}"},
            "text_body": "Hi {{ name }}, see {{ url }}",
            "html_body": '<p>Hi {{ name }}</p><img src="cid:logo">',
            "attachments": [
                {"data": gif, "base64": True, "content_type": "image/gif", "content_id": "logo"},
                {"data": "id,n\n1,2\n", "content_type": "text/csv", "file_name": "list.csv"},
            ],
        },
        substitutions={"campaign": "fall", "url": "https://x.example/?a=1&b=2"},
    )
    status, _, body = call(daemon, "POST", "/api/inject/v1", request)
    assert (status, body["success_count"]) == (200, 1)
    daemon.wait_for_maildir_count(1)
    msg = messages(daemon)["ann@example.com"]
    assert msg["Subject"] == "Offer for Ann Example"
    assert msg["From"] == "Sales <sales@sender.example>"
    assert msg["Reply-To"] == "help@sender.example"
    assert msg["To"] == "Ann Example <ann@example.com>"
    assert msg["X-Campaign"] == "fall"
    assert msg.get_content_type() == "multipart/mixed"
    related, attached = msg.iter_parts()
    alternative, image = related.iter_parts()
    text, html = alternative.iter_parts()
    assert text.get_content().strip() == "Hi Ann Example, see https://x.example/?a=1&b=2"
    assert html.get_content().strip() == '<p>Hi Ann Example</p><img src="cid:logo">'
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == base64.b64decode(gif)
    assert attached.get_filename() == "list.csv"


def test_each_kind_of_bad_input_gets_its_json_answer(kumoq):
    daemon = kumoq(http_policy("request_body_limit = 65536"))
    good = inject([{"email": "ann@example.com"}], "Subject: x\n\nbody")
    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        ("POST", "/api/inject/v1", b'{"envelope_sender": ', {}, 400, "malformed JSON"),
        (
            "POST",
            "/api/inject/v1",
            {k: v for k, v in good.items() if k != "content"},
            {},
            400,
            "missing field 'content'",
        ),
        ("POST", "/api/inject/v1", {**good, "priority": 1}, {}, 400, "unknown field 'priority'"),
        (
            "POST",
            "/api/inject/v1",
            {**good, "recipients": [{"email": 7}]},
            {},
            400,
            "recipients[0].email: expected a string",
        ),
        (
            "POST",
            "/api/inject/v1",
            {**good, "substitutions": {"pad": "x" * 70_000}},
            {},
            413,
            "length limit exceeded",
        ),
        (
            "POST",
            "/api/inject/v1",
            {**good, "content": "Subject: {{ oops\n\nx"},
            {},
            422,
            "failed parsing field 'content' as template",
        ),
        ("POST", "/api/inject/v1", good, {"Content-Type": "text/plain"}, 415, "application/json"),
        ("GET", "/api/nothing/v1", None, {}, 404, "no such endpoint"),
        ("DELETE", "/api/inject/v1", None, {}, 405, "allowed: POST"),
    ]
    for method, path, body, headers, status, text in cases:
        got, answer_headers, answer = call(daemon, method, path, body, headers=headers)
        assert answer_headers["content-type"].startswith("application/json"), (path, answer)
        assert got == status, (text, answer)
        assert text in answer["error"], answer
    assert daemon.records("Reception") == []


def test_peers_outside_trusted_hosts_need_credentials_the_policy_accepts(kumoq):
    daemon = kumoq(http_policy())
    request = inject([{"email": "ann@example.com"}], "Subject: auth\n\nbody")
    status, headers, body = call(daemon, "POST", "/api/inject/v1", request, source="127.0.0.2")
    assert status == 401
    assert "not in trusted_hosts" in body["error"]
    assert headers["www-authenticate"].startswith("Basic")
    assert call(daemon, "GET", "/metrics", source="127.0.0.2")[0] == 401
    wrong = call(daemon, "GET", "/metrics", headers=basic("daniel", "x"), source="127.0.0.2")
    assert wrong[::2] == (401, {"error": "HttpBasicAuth Authentication Failed for daniel"})
    assert call(daemon, "GET", "/api/check-liveness/v1", source="127.0.0.2")[0] == 200

    status, _, body = call(
        daemon,
        "POST",
        "/api/inject/v1",
        request,
        headers=basic("daniel", "tiger"),
        source="127.0.0.2",
    )
    assert (status, body["success_count"]) == (200, 1)
    assert (
        call(daemon, "GET", "/metrics", headers=basic("daniel", "tiger"), source="127.0.0.2")[0]
        == 200
    )
    (record,) = daemon.wait_for_records("Reception", 1)
    assert record["meta"]["http_auth"] == "daniel"
    assert record["meta"]["auth_peer"] == "127.0.0.2"
    daemon.wait_for_maildir_count(1)


def test_a_gzip_body(kumoq):
    daemon = kumoq(http_policy())
    request = inject([{"email": "zip@example.com"}], "Subject: zipped\n\nsmall on the wire")
    body = gzip.compress(json.dumps(request).encode())
    status, _, answer = call(
        daemon, "POST", "/api/inject/v1", body, headers={"Content-Encoding": "gzip"}
    )
    assert (status, answer["success_count"]) == (200, 1)
    daemon.wait_for_maildir_count(1)
    (delivered,) = daemon.maildir_messages()
    assert delivered["Subject"] == "zipped"


@pytest.mark.slow
def test_10000_recipients_in_one_request_are_all_spooled_and_delivered(kumoq):
    daemon = kumoq(http_policy(kind="SQLite"))  # LocalDisk works too, slower on this disk
    recipients = [{"email": f"r{i}@bulk.example"} for i in range(10_000)]
    request = inject(recipients, "To: list@bulk.example\nSubject: bulk\n\nSame body for all.\n")
    started = time.monotonic()
    status, _, body = call(daemon, "POST", "/api/inject/v1", request, timeout=120)
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body == {"success_count": 10_000, "fail_count": 0, "failed_recipients": [], "errors": []}
    daemon.wait_for_maildir_count(10_000, timeout=120)
    receptions = daemon.wait_for_records("Reception", 10_000, timeout=30)
    assert len({r["id"] for r in receptions}) == 10_000
    print(f"10,000 recipients injected in {elapsed:.1f}s")


def metric(text: str, name: str, service: str) -> float:
    match = re.search(rf'^{name}{{service="{re.escape(service)}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_carry_kumomtas_names_and_move_with_the_mail(kumoq):
    daemon = kumoq(http_policy())
    status, headers, before = call(daemon, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    for name in ("total_messages_received", "total_messages_delivered",
                 "total_messages_transfail", "total_messages_fail"):  # fmt: skip
        assert f"# TYPE {name} counter\n" in before
        assert f"{name}_total" not in before
    request = inject([{"email": f"m{i}@example.com"} for i in range(3)], "Subject: m\n\nm")
    assert call(daemon, "POST", "/api/inject/v1", request)[0] == 200
    daemon.wait_for_maildir_count(3)
    daemon.send("s@example.com", ["smtp@example.com"])
    daemon.wait_for_maildir_count(4)

    def moved() -> str | None:
        text = call(daemon, "GET", "/metrics")[2]
        delivered = metric(text, "total_messages_delivered", "maildir")
        return (
            text if delivered >= metric(before, "total_messages_delivered", "maildir") + 4 else None
        )

    after = daemon.wait_for(moved, 10, what="the delivered counter")
    http_before = metric(before, "total_messages_received", "http_listener")
    assert metric(after, "total_messages_received", "http_listener") == http_before + 3
    smtp_before = metric(before, "total_messages_received", "esmtp_listener")
    assert metric(after, "total_messages_received", "esmtp_listener") == smtp_before + 1
    as_json = call(daemon, "GET", "/metrics.json")[2]
    received = as_json["total_messages_received"]
    assert received["type"] == "counter"
    assert received["value"]["service"]["http_listener"] == http_before + 3


# Deliveries fail while the file ./blocker exists; the queue config is asked again each second.
BLOCKABLE_QUEUE = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('./blocker', 'r')
  local path = './var/maildir'
  if f then f:close(); path = './blocker/maildir' end
  return kumo.make_queue_config {
    retry_interval = '2s', refresh_interval = '1s', protocol = { maildir_path = path },
  }
end)
"""


def gauge(text: str, name: str, label: str, value: str) -> float | None:
    """The gauge's value for ``label="value"``, None when the series is absent."""
    line = rf'^{name}{{{label}="{re.escape(value)}"}} (\S+)$'
    match = re.search(line, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_queue_gauges_show_a_waiting_message_until_it_is_delivered(kumoq):
    blockable = BASE.format(http="", kind="LocalDisk") + BLOCKABLE_QUEUE
    daemon = kumoq(blockable, start=False)
    (daemon.workdir / "blocker").write_text("deliveries fail while this file exists")
    daemon.start()
    text = call(daemon, "GET", "/metrics")[2]
    for name in ("scheduled_count", "ready_count", "connection_count"):
        assert f"# TYPE {name} gauge\n" in text
    assert gauge(text, "connection_count", "service", "esmtp_listener") is not None
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("TransientFailure", 1)

    def waiting() -> str | None:
        text = call(daemon, "GET", "/metrics")[2]
        return text if gauge(text, "scheduled_count", "queue", "example.com") == 1 else None

    daemon.wait_for(waiting, 10, what="scheduled_count 1")

    def waiting_json() -> dict[str, Any] | None:
        family = call(daemon, "GET", "/metrics.json")[2]["scheduled_count"]
        return family if family["value"]["queue"].get("example.com") == 1 else None

    assert daemon.wait_for(waiting_json, 10, what="scheduled_count 1 in JSON")["type"] == "gauge"

    (daemon.workdir / "blocker").unlink()
    daemon.wait_for_maildir_count(1, timeout=15)

    def emptied() -> bool:
        text = call(daemon, "GET", "/metrics")[2]
        return not gauge(text, "scheduled_count", "queue", "example.com")

    daemon.wait_for(emptied, 10, what="scheduled_count 0 or absent")


def test_liveness_says_shutting_down_while_the_listeners_drain(kumoq):
    daemon = kumoq(http_policy(), env={"KUMOQ_SHUTDOWN_LISTENER_DRAIN": "3"})
    # An injection whose body is still arriving holds the drain for up to 3 s.
    slow = socket.create_connection(daemon.listeners["http"])
    slow.sendall(
        b"POST /api/inject/v1 HTTP/1.1\r\nHost: kumoq\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    time.sleep(0.2)  # for the handler to start reading the body
    stopping = threading.Thread(target=daemon.stop)
    stopping.start()
    try:
        answer = daemon.wait_for(
            lambda: (r := call(daemon, "GET", "/api/check-liveness/v1"))[0] == 503 and r,
            3,
            what="liveness to say 503",
        )
        assert answer[2] == {"error": "shutting down"}
        request = inject([{"email": "a@example.com"}], "Subject: x\n\n")
        assert call(daemon, "POST", "/api/inject/v1", request)[::2] == (
            503,
            {"error": "shutting down"},
        )
    finally:
        stopping.join(30)
        slow.close()
    assert daemon.returncode == 0
    text = "\n".join(daemon.stderr_lines)
    assert "shutdown: and for 1 HTTP requests" in text
    assert "http listener: 1 requests still running after 3s" in text
