"""SmtpDispatch when an egress event waits for DNS (PolicyWouldBlock): the event is called
again, and the message keeps the source the round robin gave it (fakes behind EgressPolicy;
the attempt itself goes to a closed port on 127.0.0.1 and fails to connect)."""

from __future__ import annotations

import socket

from kumoq.clock import FakeClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.errors import PolicyWouldBlock
from kumoq.logs.records import RecordType
from kumoq.message import EnvelopeAddress, Message, new_spool_id


class WaitingPolicy:
    """Pool a:1, b:1; the first get_egress_source call waits for DNS once."""

    def __init__(self) -> None:
        self.source_calls: list[str] = []
        self.waits = 0

    def get_egress_pool(self, name: str) -> EgressPool:
        return EgressPool.from_mapping(
            {"name": name, "entries": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
        )

    def get_egress_source(self, name: str) -> EgressSource:
        self.source_calls.append(name)
        if len(self.source_calls) == 1:

            async def fetch() -> None:
                self.waits += 1

            raise PolicyWouldBlock("the MX records of example.com", fetch)
        return EgressSource.from_mapping({"name": name})

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig:
        return EgressPathConfig.from_mapping({"prohibited_hosts": [], "connect_timeout": "2s"})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_rerun_after_a_dns_wait_keeps_the_chosen_source() -> None:
    policy = WaitingPolicy()
    mx = MxCache(TestResolver())
    dispatch = SmtpDispatch(
        policy=policy, mx=mx, resolver=lambda: mx.resolver, clock=FakeClock(), hostname="h"
    )
    config = QueueConfig(
        egress_pool="pool",
        protocol=SmtpProtocol(mx_list=(f"127.0.0.1:{closed_port()}",)),
    )
    msg = Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse("r@example.com")],
        data=b"Subject: x\r\n\r\nbody\r\n",
    )
    try:
        attempt = await dispatch.deliver(msg, config)
    finally:
        await dispatch.close()
    assert policy.waits == 1
    assert policy.source_calls == ["a", "a"]  # called again for the same source, not "b"
    assert attempt.disposition is RecordType.TransientFailure  # nothing listens on the port
    assert attempt.extra["egress_source"] == "a"
