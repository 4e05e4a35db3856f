"""The shipped policy and the examples run for real, not only under ``kumoq validate``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def test_maildir_per_tenant_example_routes_by_tenant_and_domain(kumoq):
    daemon = kumoq((ROOT / "examples" / "maildir-per-tenant.lua").read_text())
    daemon.send("s@example.com", ["a@example.org"], headers={"X-Tenant": "acme"})
    daemon.send("s@example.com", ["b@example.net"])
    daemon.send("s@example.com", ["c@blackhole.example"])
    daemon.wait_for_records("Delivery", 2)
    acme = daemon.maildir_files("var/maildir/acme/example.org")
    none = daemon.maildir_files("var/maildir/none/example.net")
    assert len(acme) == 1
    assert len(none) == 1
    assert acme[0].stat().st_mode & 0o777 == 0o640
    queues = sorted(r["queue"] for r in daemon.records("Reception"))
    assert queues == ["acme@example.org", "example.net", "null"]
    # headers = { 'Subject', 'X-*' } selects the Subject and the X-Tenant header.
    acme_reception = next(r for r in daemon.records("Reception") if r["queue"].startswith("acme"))
    assert acme_reception["headers"]["Subject"] == "Hello! This is a test"
    assert acme_reception["headers"]["X-Tenant"] == "acme"


HOSTILE_TENANTS = [
    "../../../escaped",  # from var/maildir/<tenant>/<domain>: tmp_path/escaped/<domain>
    "../../..",
    "../../../escaped/../kumoq0/var/spool",
    "/tmp",
    "..",
]


def _files_outside(tmp_path: Path, daemon) -> list[Path]:
    """Files under tmp_path that are neither the daemon's policy, spool, logs nor maildir."""
    var = daemon.workdir / "var"
    allowed = [var / "maildir", var / "spool", var / "log", daemon.policy_path]
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not any(p == a or p.is_relative_to(a) for a in allowed)
    ]


def test_maildir_per_tenant_example_keeps_a_hostile_tenant_inside_the_maildir(kumoq, tmp_path):
    """Issue 10, defect 6: X-Tenant '../../../x' wrote a maildir outside var/maildir."""
    daemon = kumoq((ROOT / "examples" / "maildir-per-tenant.lua").read_text())
    for i, tenant in enumerate(HOSTILE_TENANTS):
        daemon.send("s@example.com", [f"r{i}@example.org"], headers={"X-Tenant": tenant})
    daemon.wait_for_records("Delivery", len(HOSTILE_TENANTS))
    assert _files_outside(tmp_path, daemon) == []
    # The example takes only plain names: every one of these went to 'none'.
    assert len(daemon.maildir_files("var/maildir/none/example.org")) == len(HOSTILE_TENANTS)
    assert len(daemon.maildir_files()) == len(HOSTILE_TENANTS)


def test_a_policy_that_passes_the_header_through_still_cannot_leave_the_root(kumoq, tmp_path):
    """The example as it was, unsanitized: kumoq's path rule alone keeps the maildir in its
    root; each value becomes one percent-encoded directory (docs/security.md)."""
    text = (ROOT / "examples" / "maildir-per-tenant.lua").read_text()
    text = text.replace("plain_tenant(msg:get_meta 'x_tenant')", "msg:get_meta 'x_tenant'")
    assert "local tenant = msg:get_meta 'x_tenant'" in text
    daemon = kumoq(text)
    for i, tenant in enumerate(HOSTILE_TENANTS):
        daemon.send("s@example.com", [f"r{i}@example.org"], headers={"X-Tenant": tenant})
    daemon.wait_for_records("Delivery", len(HOSTILE_TENANTS))
    assert _files_outside(tmp_path, daemon) == []
    root = daemon.workdir / "var" / "maildir"
    tenants = sorted(p.name for p in root.iterdir())
    assert tenants == sorted(
        [
            "%2E.%2F..%2F..%2Fescaped%2F..%2Fkumoq0%2Fvar%2Fspool",
            "%2E.%2F..%2F..%2Fescaped",
            "%2E.%2F..%2F..",
            "%2Ftmp",
            "%2E.",
        ]
    )
    for name in tenants:
        assert len(daemon.maildir_files(root / name / "example.org")) == 1


def test_shipped_policy_delivers_when_moved_to_port_0(kumoq):
    text = (ROOT / "policy" / "init.lua").read_text()
    text = text.replace("127.0.0.1:2025", "127.0.0.1:0").replace("127.0.0.1:8000", "127.0.0.1:0")
    daemon = kumoq(text)
    daemon.send("me@example.com", ["you@example.com"], headers={"X-Campaign": "news"})
    daemon.wait_for_maildir_count(1)
    (reception,) = daemon.wait_for_records("Reception", 1)
    assert reception["queue"] == "news:@example.com"
    # The README's injection example, against the shipped policy's HTTP listener.
    host, port = daemon.listeners["http"]
    request = urllib.request.Request(
        f"http://{host}:{port}/api/inject/v1",
        data=json.dumps(
            {
                "envelope_sender": "me@example.com",
                "content": "Subject: hi\r\n\r\nhello\r\n",
                "recipients": [{"email": "you@example.com"}],
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.loads(answer.read())["success_count"] == 1
    daemon.wait_for_maildir_count(2)


def test_kumoq_tail_prints_the_records(kumoq):
    text = (ROOT / "examples" / "minimal.lua").read_text()
    daemon = kumoq(text)
    daemon.send("s@example.com", ["r@example.com"])
    daemon.wait_for_records("Delivery", 1)
    daemon.stop()
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "tail", str(daemon.log_dir), "--no-follow"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types == ["Reception", "Delivery"]


@pytest.mark.parametrize("name", ["e2e", "reception", "relay"])
def test_bench_policies_load_with_their_shared_init(tmp_path, name):
    """bench/e2e.py copies a bench policy and bench_init.lua into a scratch directory; the
    policy's init must find and run the shared part there."""
    policies = ROOT / "bench" / "policies"
    (tmp_path / "init.lua").write_text((policies / f"{name}.lua").read_text())
    (tmp_path / "bench_init.lua").write_text((policies / "bench_init.lua").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(tmp_path / "init.lua")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OK (1 SMTP listener(s), 2 spool(s), 1 log destination(s))" in result.stdout


def test_requeue_by_error_example_rebinds_caps_and_varies_the_retry(kumoq, smart_sink):
    """examples/requeue-by-error.lua against the smart sink, with its waits made short:
    greylisting moves the message to the 'greylisted' tenant's queue at once, a full mailbox
    counts double, and every message gives up after MAX_ATTEMPTS with a Bounce."""
    text = (ROOT / "examples" / "requeue-by-error.lua").read_text()
    for old, new in [
        ("MAX_ATTEMPTS = 6", "MAX_ATTEMPTS = 3"),
        ("RETRY = '10 minutes'", "RETRY = '1s'"),
        ("GREYLIST_RETRY = '2 minutes'", "GREYLIST_RETRY = '1s'"),
    ]:
        assert old in text
        text = text.replace(old, new)
    env = {"KUMOQ_SMTP_LISTEN": "127.0.0.1:0", "KUMOQ_RELAY_HOST": smart_sink.target}
    daemon = kumoq(text, env=env)
    daemon.send("s@example.com", ["450-greylisted@example.com"])
    daemon.send("s@example.com", ["452-mailbox-full@example.com"])
    daemon.send("s@example.com", ["250-fine@example.com"])
    (delivery,) = daemon.wait_for_records("Delivery", 1, timeout=20)
    assert delivery["recipient"] == "250-fine@example.com"
    bounces = {r["recipient"]: r for r in daemon.wait_for_records("Bounce", 2, timeout=30)}
    grey, full = bounces["450-greylisted@example.com"], bounces["452-mailbox-full@example.com"]
    assert grey["response"]["content"] == (
        "5.4.7 gave up after 3 attempts; last reply: 450 4.0.0 you said 450-greylisted"
    )
    assert full["response"]["code"] == 550
    failures = daemon.records("TransientFailure")
    grey_queues = [r["queue"] for r in failures if r["recipient"].startswith("450")]
    assert grey_queues == ["example.com", "greylisted@example.com", "greylisted@example.com"]
    full_attempts = [r["num_attempts"] for r in failures if r["recipient"].startswith("452")]
    assert full_attempts == [0, 2]  # two failures, counted as three attempts


def test_tenant_throttles_example_limits_each_tenant_on_its_own(kumoq, smart_sink):
    """examples/tenant-throttles.lua with a rate of 2 a minute: a tenant's third message is
    refused with a 451 naming the wait, another tenant is not affected, a patient tenant's
    session waits instead, and the accepted ones are relayed through the shared egress
    throttles."""
    import smtplib

    text = (ROOT / "examples" / "tenant-throttles.lua").read_text()
    for old, new in [
        ("TENANT_RATE = '1,000/min'", "TENANT_RATE = '2/min'"),
        ("['newsletters'] = '10/s'", "['newsletters'] = '2/s,max_burst=1'"),
    ]:
        assert old in text
        text = text.replace(old, new)
    env = {"KUMOQ_SMTP_LISTEN": "127.0.0.1:0", "KUMOQ_RELAY_HOST": smart_sink.target}
    daemon = kumoq(text, env=env)
    for _ in range(2):
        daemon.send("s@example.com", ["250-a@example.com"], headers={"X-Tenant": "acme"})
    with pytest.raises(smtplib.SMTPDataError) as refused:
        daemon.send("s@example.com", ["250-a@example.com"], headers={"X-Tenant": "acme"})
    assert refused.value.smtp_code == 451
    assert b"tenant acme is over its rate; try again in" in refused.value.smtp_error
    daemon.send("s@example.com", ["250-b@example.com"], headers={"X-Tenant": "other"})
    for _ in range(2):
        daemon.send("s@example.com", ["250-n@example.com"], headers={"X-Tenant": "newsletters"})
    deliveries = daemon.wait_for_records("Delivery", 5, timeout=30)
    assert sorted(d["meta"]["tenant"] for d in deliveries) == [
        "acme", "acme", "newsletters", "newsletters", "other",
    ]  # fmt: skip
