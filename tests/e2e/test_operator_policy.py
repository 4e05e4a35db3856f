"""End to end: an operator's policy in the shape of KumoMTA's example policy
(tests/e2e/operator_policy), on kumoq's own helpers written in the style of KumoMTA's
policy-extras: ``kq-extras.queue`` (tenants and queue settings from TOML, ``kumo.memoize``,
``kumo.domain_map``, and a ``validate_config`` that uses ``kumo.eval_config_monitor_globs``,
``kumo.get_event_registrars`` and ``kumo.make_message``), ``kq-extras.sources`` (pools and
sources), ``kq-extras.listener_domains`` and ``kq-extras.dkim_sign``, with ``kumo.shaping.load``,
``msg:check_fix_conformance`` and a ``requeue_message`` handler.

The test installs a copy and changes only its paths, as an operator would; ``kumoq validate``
loads it, and the ``harness`` fixture runs it under generated traffic.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

pytestmark = pytest.mark.integration

POLICY_DIR = Path(__file__).parent / "operator_policy"
ETC = "/opt/kumomta/etc/policy"


def install(root: Path) -> Path:
    """The policy copied under ``root`` with its data paths moved there, and a DKIM key."""
    target = root / "policy"
    shutil.copytree(POLICY_DIR, target)
    for path in [target / "init.lua", *(target / "etc").glob("*.toml")]:
        path.write_text(path.read_text().replace(ETC, str(target / "etc")))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (target / "etc" / "dkim").mkdir()
    (target / "etc" / "dkim" / "example.com.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return target / "init.lua"


def validate(policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(policy)],
        capture_output=True, text=True, cwd=policy.parent, timeout=120, check=False,
        env=os.environ.copy(),
    )  # fmt: skip


def test_validate_loads_the_policy_and_runs_the_helpers_checks(tmp_path: Path) -> None:
    result = validate(install(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_the_helpers_validate_config_finds_what_is_wrong(tmp_path: Path) -> None:
    policy = install(tmp_path)
    queue = policy.parent / "etc" / "queue.toml"
    queue.write_text(queue.read_text().replace('egress_pool = "pool-1"', 'egress_pool = "pool-9"'))
    init = policy.read_text()
    # Another get_queue_config handler after the queue helper's, and the globs narrowed.
    policy.write_text(
        init.replace("kumo.set_config_monitor_globs { ETC .. '/*.toml' }", "")
        + "\nkumo.on('get_queue_config', function() end)\n"
    )
    result = validate(policy)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "is not covered by kumo.set_config_monitor_globs" in output
    assert "queue: tenant acme uses an undefined pool pool-9" in output
    assert "another get_queue_config handler was registered after this helper" in output


def test_the_policy_runs_under_the_harness(harness, tmp_path: Path) -> None:
    policy = install(tmp_path)
    result = harness(
        policy, messages=60, domains=["gmail.com:2", "yahoo.com:1"],
        headers={"X-Tenant": "acme"}, tempfail_percent=10, seed=3, timeout=120,
        expect=["delivered=60", "bounced=0"],
    )  # fmt: skip
    stats = result.stats
    # The tenant came from the header (and the queue file knows it); pool-1 has both sources.
    assert set(stats.by_scheduled_queue) == {"acme@gmail.com", "acme@yahoo.com"}
    assert {name.split("->")[0] for name in stats.by_ready_queue} == {"ip-1", "ip-2"}
    records = [
        json.loads(line)
        for segment in (tmp_path / "harness1" / "_harness" / "log").iterdir()
        for line in segment.read_text().splitlines()
    ]
    deliveries = [r for r in records if r["type"] == "Delivery"]
    assert len(deliveries) == 60
    # Every message was DKIM-signed for the From domain, and kept its tenant.
    assert {r["meta"].get("dkim_domain") for r in deliveries} == {"example.com"}
    assert {r["meta"].get("tenant") for r in deliveries} == {"acme"}
    # The sink tempfailed some: requeue_message saw them, and they were retried.
    retried = [r for r in deliveries if r["meta"].get("requeued") == "yes"]
    assert 0 < len(retried) <= result.sink["tempfailed"]
    # The signatures the sink received verify with dkimpy, against the key's public half.
    stored = sorted((tmp_path / "harness1" / "_harness" / "sink-maildir" / "new").iterdir())
    assert len(stored) == 60
    for path in stored[:5]:
        assert dkim.verify(path.read_bytes(), dnsfunc=dkim_txt(policy)), path.name


def dkim_txt(policy: Path) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` answering ``s1._domainkey.example.com`` with the installed key."""
    pem = (policy.parent / "etc" / "dkim" / "example.com.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return record if text.rstrip(".") == "s1._domainkey.example.com" else None

    return lookup
