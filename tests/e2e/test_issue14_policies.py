"""Issue 14's own policies, each loaded by ``kumoq validate`` and run under generated traffic by
the ``harness`` fixture: the utility-module policy (tests/e2e/utility_policy), the listener
domains and ``requeue_message`` policies of test_policy_events.py, and the message-method
helper of test_message_methods.py. (The operator policy of test_operator_policy.py, in the
shape of KumoMTA's example policy, has its own file.)

The harness sends every delivery to its sink; maildir queues are written in its scratch
directory, ``tmp_path / "harness1"`` for a test's first run, which is also the daemon's working
directory, so a policy that names its data files relative to it is installed there first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.policies import MAILDIR_QUEUE, policy
from tests.e2e.test_message_methods import HELPER as MESSAGE_CHECKS
from tests.e2e.test_message_methods import POLICY as MESSAGE_POLICY
from tests.e2e.test_policy_events import LISTENER_DOMAINS, UNTRUSTED, requeue_policy
from tests.e2e.test_utility_policy import POLICY_DIR as UTILITY_POLICY

pytestmark = pytest.mark.integration


def validate(path: Path, env: dict[str, str] | None = None) -> str:
    """``kumoq validate`` of the policy at ``path``, run in its directory; its output. Fails
    the test unless it passes."""
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(path)],
        capture_output=True, text=True, cwd=path.parent, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def records(workdir: Path, kind: str) -> list[dict[str, Any]]:
    """The harness run's log records of one type."""
    return [
        record
        for segment in (workdir / "_harness" / "log").iterdir()
        for line in segment.read_text().splitlines()
        if (record := json.loads(line))["type"] == kind
    ]


def write(directory: Path, text: str, **beside: str) -> Path:
    """``text`` as ``directory/init.lua``, with the modules ``beside`` it; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in beside.items():
        (directory / f"{name}.lua").write_text(source)
    path = directory / "init.lua"
    path.write_text(text)
    return path


def test_the_utility_policy(harness, tmp_path: Path) -> None:
    workdir = tmp_path / "harness1"  # the harness's scratch directory: the data files go there
    shutil.copytree(UTILITY_POLICY, workdir)
    env = {"KUMOQ_LUA_PATH": str(workdir / "share")}
    assert "OK" in validate(workdir / "init.lua", env)
    result = harness(
        workdir / "init.lua", messages=30, env=env, expect=["delivered=30", "bounced=0"],
        domains=["vip.example.test:1", "deep.sub.example.test:1", "other.test:1"],
        sender="a@news.example.org",
    )  # fmt: skip
    meta = {r["recipient"].split("@")[1]: r["meta"] for r in records(workdir, "Delivery")}
    # kq.routing's domain_map and TOML, the YAML tenants and kumo.time, as with the daemon.
    assert {d: m["route"] for d, m in meta.items()} == {
        "vip.example.test": "vip", "deep.sub.example.test": "wildcard", "other.test": "default",
    }  # fmt: skip
    assert {m["tenant"] for m in meta.values()} == {"newsletters"}
    assert all(m["received_year"] >= 2024 for m in meta.values())
    assert result.stats.by_scheduled_queue.keys() == {
        "newsletters@vip.example.test", "newsletters@deep.sub.example.test",
        "newsletters@other.test",
    }  # fmt: skip


def test_the_listener_domains_policy(harness, tmp_path: Path) -> None:
    text = policy(LISTENER_DOMAINS, MAILDIR_QUEUE, listener=UNTRUSTED)
    path = write(tmp_path / "listener_domains", text)
    assert "OK" in validate(path)
    # Nobody is in relay_hosts: relay.test takes mail, other.test is refused at RCPT.
    result = harness(
        path, messages=40, domains=["relay.test:3", "other.test:1"],
        expect=["delivered=30", "permfailed=10"],
    )  # fmt: skip
    assert result.stats.by_scheduled_queue.keys() == {"relay.test"}
    refused = [
        r for r in records(tmp_path / "harness1", "Rejection") if r["response"]["code"] == 550
    ]
    assert len(refused) == 10  # one per other.test message: 550 5.7.1 relaying not permitted


def test_the_requeue_message_policy(harness, tmp_path: Path) -> None:
    # mx_list names a host the harness replaces with its sink, as any other.
    path = write(tmp_path / "requeue", requeue_policy(25))
    assert "OK" in validate(path)
    result = harness(path, messages=40, tempfail_percent=25, seed=14, timeout=120)
    workdir = tmp_path / "harness1"
    failures = records(workdir, "TransientFailure")
    bounces = records(workdir, "Bounce")
    assert failures, "the sink tempfailed none: requeue_message was never asked"
    # requeue_message gives up at the second failure: kumo.reject turns it into a Bounce.
    assert {b["response"]["content"] for b in bounces} <= {"5.4.7 gave up after 2 attempts"}
    assert len(bounces) <= len(failures) // 2
    assert len(records(workdir, "Delivery")) + len(bounces) == 40
    assert result.stats.by_scheduled_queue.keys() == {"example.com"}


def test_the_message_methods_helper(harness, tmp_path: Path) -> None:
    path = write(tmp_path / "methods", policy(MESSAGE_POLICY), message_checks=MESSAGE_CHECKS)
    assert "OK" in validate(path)
    harness(
        path, messages=20, headers={"X-Campaign-Id": "spring", "X-Source": "harness"},
        expect=["delivered=20", "bounced=0"],
    )  # fmt: skip
    deliveries = records(tmp_path / "harness1", "Delivery")
    # import_headers moved X-Campaign-Id into the campaign; the footer was appended.
    assert {r["meta"].get("campaign") for r in deliveries} == {"spring"}
    files = list((tmp_path / "harness1" / "var" / "maildir" / "new").iterdir())
    assert len(files) == 20
    body = files[0].read_bytes()
    assert b"-- sent through kumoq" in body
    assert b"Authentication-Results: mx.test;" in body
