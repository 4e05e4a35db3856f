"""The shipped policy takes its listen addresses from KUMOQ_SMTP_LISTEN and KUMOQ_HTTP_LISTEN,
defaulting to 127.0.0.1:2025 and 127.0.0.1:8000 (issue 13)."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from kumoq.declarations import load_policy
from kumoq.errors import PolicyError

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).parents[2] / "policy" / "init.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_shipped_policy_listens_where_the_environment_says(kumoq):
    smtp_port, http_port = free_port(), free_port()
    env = {
        "KUMOQ_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        "KUMOQ_HTTP_LISTEN": f"127.0.0.1:{http_port}",
    }
    daemon = kumoq(SHIPPED.read_text(), env=env)
    assert daemon.listeners["smtp"] == ("127.0.0.1", smtp_port)
    assert daemon.listeners["http"] == ("127.0.0.1", http_port)
    daemon.send("me@example.com", ["you@example.com"])  # to the SMTP listener it found
    daemon.wait_for_maildir_count(1)
    url = f"http://127.0.0.1:{http_port}/api/check-liveness/v1"
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200


@pytest.mark.parametrize("value", [None, ""])
def test_unset_or_empty_means_the_default_addresses(monkeypatch, value):
    for name in ("KUMOQ_SMTP_LISTEN", "KUMOQ_HTTP_LISTEN"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    _runtime, _events, decl = load_policy(SHIPPED)
    assert [c.listen for c in decl.listeners] == ["127.0.0.1:2025"]
    assert [c.listen for c in decl.http_listeners] == ["127.0.0.1:8000"]


def test_a_bad_address_in_the_environment_names_the_policy_line(monkeypatch):
    monkeypatch.setenv("KUMOQ_SMTP_LISTEN", "2025")
    with pytest.raises(PolicyError, match=r"invalid listen address '2025'") as info:
        load_policy(SHIPPED)
    assert (info.value.location or "").startswith("init.lua:")
