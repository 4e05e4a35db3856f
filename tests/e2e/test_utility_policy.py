"""End to end: a policy built on KumoMTA's utility modules (tests/e2e/utility_policy), loaded
by ``kumoq validate`` and run by a real daemon.

The policy keeps per-domain settings in TOML behind ``kumo.memoize`` and ``kumo.domain_map``
(``kq.routing``, a helper found on ``KUMOQ_LUA_PATH``), refuses recipients by ``kumo.regex``
patterns from a JSON file with comments (``lib.screening``, beside the policy), maps sender
domains to tenants from YAML, tags messages with ``kumo.string`` and ``kumo.time``, and starts a
background task with ``kumo.spawn_task`` that sleeps with ``kumo.time.sleep``.
"""

from __future__ import annotations

import datetime
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

POLICY_DIR = Path(__file__).parent / "utility_policy"


def install(workdir: Path) -> tuple[Path, dict[str, str]]:
    """The policy copied into ``workdir`` (the daemon's working directory, where its data
    files are read), and the environment that puts its helper directory on the search path."""
    shutil.copytree(POLICY_DIR, workdir, dirs_exist_ok=True)
    return workdir / "init.lua", {"KUMOQ_LUA_PATH": str(workdir / "share")}


def validate(policy: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(policy)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, **env},
        timeout=60,
    )


def test_validate_loads_the_policy(tmp_path):
    policy, env = install(tmp_path)
    result = validate(policy, env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_validate_names_an_unknown_kumo_function(tmp_path):
    policy, env = install(tmp_path)
    helper = tmp_path / "share" / "kq" / "routing.lua"
    helper.write_text(
        helper.read_text().replace("kumo.domain_map.new(domains)", "kumo.domain_map.build(domains)")
    )
    result = validate(policy, env, tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "kumo.domain_map.build is not available in kumoq" in output
    assert "kq/routing.lua:34" in output


def test_the_policy_routes_screens_and_tags_mail(tmp_path, kumoq):
    workdir = tmp_path / "daemon"
    policy, env = install(workdir)
    daemon = kumoq(policy, name="daemon", env=env)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        daemon.send("a@news.example.org", ["SpamTrap7@example.test", "postmaster@vip.example.test"])
    refused = info.value.recipients
    assert refused["SpamTrap7@example.test"] == (550, b"5.7.1 recipient refused by policy")
    assert refused["postmaster@vip.example.test"][0] == 550

    daemon.send(
        "a@news.example.org",
        ["a@vip.example.test", "b@mail.example.test", "c@other.test"],
        subject="[sale] three words here",
    )
    daemon.send("b@shop.example.org", ["d@deep.sub.example.test"], subject="plain")
    deliveries = daemon.wait_for_records("Delivery", 4)
    meta = {d["recipient"]: d["meta"] for d in deliveries}
    assert {r: m["route"] for r, m in meta.items()} == {
        "a@vip.example.test": "vip",
        "b@mail.example.test": "wildcard",
        "c@other.test": "default",
        "d@deep.sub.example.test": "wildcard",
    }
    assert meta["a@vip.example.test"]["tenant"] == "newsletters"
    assert meta["d@deep.sub.example.test"]["tenant"] == "shop"
    assert meta["a@vip.example.test"]["subject_words"] == 4
    assert meta["a@vip.example.test"]["subject_tag"] == "sale"
    assert "subject_tag" not in meta["d@deep.sub.example.test"]
    received = datetime.datetime.fromisoformat(meta["c@other.test"]["received_at"])
    assert received.year == meta["c@other.test"]["received_year"]
    assert abs((datetime.datetime.now(datetime.UTC) - received).total_seconds()) < 120

    for route, count in (("vip", 1), ("wildcard", 2), ("default", 1)):
        files = list((workdir / "var" / "maildir" / route / "new").iterdir())
        assert len(files) == count, route

    heartbeat = daemon.wait_for(
        lambda: [line for line in daemon.stderr_lines if "heartbeat from utility-policy" in line],
        timeout=10,
        what="the spawned task's heartbeat line",
    )
    assert "slept true" in heartbeat[0], heartbeat
