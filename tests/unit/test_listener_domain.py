"""``kumo.make_listener_domain`` and the relay decision (KumoMTA's ``check_relaying``).

The table parser and ``relay_disposition`` are pure; ``RelayCheck`` is driven with a listener
domain source that counts its calls, to pin KumoMTA's per-connection cache. The real policy
and the real listener are in tests/e2e/test_policy_events.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from kumoq.config.listener_domain import (
    ListenerDomain,
    LogReportDisposition,
    RelayDisposition,
    relay_disposition,
)
from kumoq.errors import ConfigError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.relay import DOMAINS_PER_CONNECTION, RelayCheck, SessionMeta

Log = LogReportDisposition


def test_defaults_relay_nothing_and_log_nothing():
    domain = ListenerDomain.from_mapping({})
    assert domain == ListenerDomain()
    assert (domain.relay_to, domain.relay_from) == (False, ())
    assert (domain.log_oob, domain.log_arf) == (Log.Ignore, Log.Ignore)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Log.LogThenRelay),  # KumoMTA's legacy boolean form
        (False, Log.Ignore),
        ("Ignore", Log.Ignore),
        ("LogThenDrop", Log.LogThenDrop),
        ("LogThenRelay", Log.LogThenRelay),
    ],
)
def test_log_oob_and_log_arf_take_a_boolean_or_a_name(value, expected):
    domain = ListenerDomain.from_mapping({"log_oob": value, "log_arf": value})
    assert (domain.log_oob, domain.log_arf) == (expected, expected)


def test_relay_from_is_a_cidr_list_and_ttl_is_still_accepted():
    domain = ListenerDomain.from_mapping(
        {"relay_to": True, "relay_from": ["10.0.0.0/24", "192.0.2.7"], "ttl": "5 minutes"}
    )
    assert domain.relay_from == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert domain.ttl == 300.0


@pytest.mark.parametrize(
    ("mapping", "error"),
    [
        ({"relay_too": True}, "unknown key 'relay_too'; allowed keys are: log_arf, log_oob,"),
        ({"log_arf": "yes"}, "log_arf: invalid value 'yes'; expected a boolean or one of"),
        ({"relay_to": "true"}, "relay_to: expected true or false"),
        ({"relay_from": ["10.0.0.1/24"]}, "relay_from: invalid CIDR '10.0.0.1/24'"),
    ],
)
def test_mistakes_are_errors_naming_the_key(mapping, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        ListenerDomain.from_mapping(mapping)


RELAY_TO = ListenerDomain(relay_to=True)
OOB = ListenerDomain(log_oob=Log.LogThenDrop)
FROM_LAN = ListenerDomain.from_mapping({"relay_from": ["10.0.0.0/8"]})


@pytest.mark.parametrize(
    ("trusted", "peer", "sender", "recipient", "relay", "accept"),
    [
        (False, "192.0.2.1", None, None, False, False),  # nothing says yes
        (True, "192.0.2.1", None, None, True, True),  # relay_hosts (or AUTH)
        (False, "192.0.2.1", None, RELAY_TO, True, True),  # relay_to of the recipient domain
        (False, "192.0.2.1", RELAY_TO, None, False, False),  # relay_to of the sender: no
        (False, "10.1.2.3", FROM_LAN, None, True, True),  # relay_from of the sender domain
        (False, "192.0.2.1", FROM_LAN, None, False, False),  # ... from elsewhere: no
        (False, "10.1.2.3", None, FROM_LAN, False, False),  # relay_from of the recipient: no
        (False, "192.0.2.1", None, OOB, False, True),  # reports are taken, not relayed
        (True, "192.0.2.1", None, OOB, True, True),
    ],
)
def test_relay_disposition(trusted, peer, sender, recipient, relay, accept):
    disposition = relay_disposition(trusted, peer, sender, recipient)
    assert (disposition.relay, disposition.accept_rcpt_to) == (relay, accept)


def test_reports_settings_come_from_the_recipient_domain():
    oob_arf = ListenerDomain(log_oob=Log.LogThenRelay, log_arf=Log.LogThenDrop)
    assert relay_disposition(False, "192.0.2.1", oob_arf, None) == RelayDisposition(False)
    assert relay_disposition(False, "192.0.2.1", None, oob_arf) == RelayDisposition(
        False, log_arf=Log.LogThenDrop, log_oob=Log.LogThenRelay
    )


class Domains:
    """A ``ListenerDomains`` that answers from a table and counts what it was asked."""

    def __init__(self, table: dict[str, ListenerDomain]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def get_listener_domain(self, conn: dict[str, Any], domain: str) -> ListenerDomain | None:
        self.asked.append(domain)
        if domain == "boom.test":
            raise RuntimeError("the policy failed")
        return self.table.get(domain)


def addr(text: str) -> EnvelopeAddress:
    local, _, domain = text.partition("@")
    return EnvelopeAddress(local, domain)


def check(domains: Domains | None, trusted: bool = False) -> RelayCheck:
    conn = SessionMeta(received_from="192.0.2.1")
    conn.relay = RelayCheck(conn, lambda: trusted, domains)
    return conn.relay


def test_each_domain_is_asked_once_per_connection():
    domains = Domains({"relay.test": RELAY_TO})
    relay = check(domains)

    async def run() -> list[bool]:
        return [
            (await relay.disposition(addr("s@a.test"), addr(f"r{i}@{d}"))).relay
            for i, d in enumerate(["relay.test", "other.test", "relay.test", "other.test"])
        ]

    assert asyncio.run(run()) == [True, False, True, False]
    assert domains.asked == ["a.test", "relay.test", "other.test"]  # the sender's too
    # Another connection asks again.
    other = check(domains)
    asyncio.run(other.disposition(addr("s@a.test"), addr("r@relay.test")))
    assert domains.asked[3:] == ["a.test", "relay.test"]


def test_the_cache_keeps_at_most_17_domains_the_oldest_going_first():
    domains = Domains({})
    relay = check(domains)

    async def run() -> None:
        for i in range(DOMAINS_PER_CONNECTION + 3):
            await relay.disposition(addr("s@a.test"), addr(f"r@d{i}.test"))
        await relay.disposition(addr("s@a.test"), addr("r@d0.test"))  # gone: asked again
        await relay.disposition(addr("s@a.test"), addr(f"r@d{DOMAINS_PER_CONNECTION}.test"))

    asyncio.run(run())
    assert domains.asked.count("d0.test") == 2
    assert domains.asked.count(f"d{DOMAINS_PER_CONNECTION}.test") == 1
    assert len(relay._cache) == DOMAINS_PER_CONNECTION


def test_a_failed_lookup_is_raised_and_not_remembered():
    domains = Domains({})
    relay = check(domains)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the policy failed"):
            asyncio.run(relay.disposition(addr("s@a.test"), addr("r@boom.test")))
    assert domains.asked.count("boom.test") == 2


def test_without_listener_domains_only_trust_counts():
    assert asyncio.run(check(None).disposition(addr("s@a"), addr("r@b"))).relay is False
    assert asyncio.run(check(None, True).disposition(addr("s@a"), addr("r@b"))).relay is True


def test_session_meta_is_plain_meta_when_copied():
    conn = SessionMeta(received_from="192.0.2.1")
    conn.relay = RelayCheck(conn, lambda: True, None)
    assert dict(conn) == {"received_from": "192.0.2.1"}
    assert conn == {"received_from": "192.0.2.1"}
