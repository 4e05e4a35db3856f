"""Run a scenario through kumoq's real scheduler and egress on virtual time: ``simulate``.

The pieces are the daemon's own, wired as ``kumoq.daemon`` wires them: the policy loaded by
``load_policy`` answers ``get_queue_config`` and the ``get_egress_*`` events
(``kumoq.declarations``); ``QueueManager`` schedules, retries, throttles and expires;
``SmtpDispatch`` picks pools and sources, fills the ready queues and runs the dispatchers with
their connection limits and rates; ``SmtpClientSession`` speaks SMTP. Only what sits behind a
seam is simulated:

- time: a ``FakeClock`` driving a ``VirtualLoop`` (kumoq.simulate.virtual_loop), so hours
  pass in the time the work itself takes;
- the network: the loop's connections go to the scenario's destinations
  (kumoq.simulate.destination), and DNS is a ``TestResolver`` holding their MX records;
- the spool and the log records: in memory (kumoq.simulate.recorder);
- reception: messages are made as reception makes them (one per recipient, the policy's
  ``smtp_server_message_received`` fired on each) and handed to the queue manager; no SMTP
  listener runs. A maildir queue is counted as delivered at once and writes nothing.

The run ends when every message is final or ``duration`` has passed, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from kumoq.clock import FakeClock
from kumoq.config.queue import MaildirProtocol, QueueConfig, SmtpProtocol
from kumoq.declarations import PolicyEgress, PolicyQueueConfigs, load_policy
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.egress.sources import SourceSelector
from kumoq.errors import KumoqError
from kumoq.logs.records import RecordType, Response
from kumoq.lua.events import PolicyEvents
from kumoq.message import (
    NULL_QUEUE,
    EnvelopeAddress,
    Message,
    new_session_id,
    new_spool_id,
)
from kumoq.scheduler.attempt import Attempt, Deliverer
from kumoq.scheduler.manager import QueueManager
from kumoq.simulate.destination import SimulatedNetwork
from kumoq.simulate.recorder import MemorySpool, Tally
from kumoq.simulate.scenario import Campaign, Scenario
from kumoq.simulate.virtual_loop import run_virtual

__all__ = ["SAMPLES_PER_BUCKET", "simulate"]

log = logging.getLogger("kumoq.simulate")

SAMPLES_PER_BUCKET: Final = 6
"""How often per bucket the queue depth is sampled (and the end of the run looked for)."""
INJECT_YIELD_EVERY: Final = 500
"""A campaign sent all at once lets the loop run after this many messages."""
GC_THRESHOLD: Final = (50_000, 20, 100)
"""The cyclic GC's thresholds during a run. Every message of a campaign stays alive until it is
final, so with the defaults (700, 10, 10) the collector walks the growing heap again and again
for nothing (7% of a 20,000-message run, measured with the GC off); the daemon turns it off
while it re-queues its spool for the same reason. Cycles (a failed attempt's exception and its
traceback) are still collected, less often."""
_CONN_META: Final = {"received_from": "127.0.0.1", "received_via": "127.0.0.1:25"}
_ACCEPTED: Final = Response(250, (2, 0, 0), "OK (simulated reception)", None)
_NOT_SIMULATED: Final = "delivery is not available in this kumoq build"
"""The queue manager's response for a protocol with no deliverer (custom Lua, here)."""


class _LocalDelivery:
    """The ``Deliverer`` for maildir queues: delivered at once, nothing written."""

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        return Attempt(
            RecordType.Delivery,
            Response(200, None, "simulated maildir delivery (nothing written)", None),
            delivery_protocol="Maildir",
            session_id=new_session_id(),
        )


def _body(campaign: Campaign) -> bytes:
    """The message text: the campaign's headers, then filler up to its ``size``."""
    head = [f"From: <{campaign.sender}>", "Subject: simulated campaign message"]
    head += [f"{name}: {value}" for name, value in campaign.headers]
    text = ("\r\n".join(head) + "\r\n\r\n").encode()
    line = b"simulated body " * 4 + b"\r\n"
    missing = max(0, campaign.size - len(text))
    return text + (line * (missing // len(line) + 1))[:missing]


class _Run:
    """One simulation's wiring and its tasks."""

    def __init__(self, scenario: Scenario, policy: Path, clock: FakeClock) -> None:
        self.scenario = scenario
        self.policy = policy
        self.clock = clock
        self.origin = clock.now()
        self._mono_origin = clock.monotonic()
        self.rng = random.Random(scenario.seed)
        self.network = SimulatedNetwork(
            scenario.destinations, elapsed=self.elapsed, rng=random.Random(scenario.seed + 1)
        )
        buckets = -(-scenario.duration // scenario.bucket)
        self.tally = Tally(
            self.elapsed, origin=self.origin, bucket=scenario.bucket, buckets=int(buckets)
        )
        self.spool = MemorySpool()
        self.ended_at = 0.0
        self.warnings: list[str] = []

    def elapsed(self) -> float:
        """Seconds into the run (from the monotonic clock: small numbers, exact sums)."""
        return self.clock.monotonic() - self._mono_origin

    async def main(self) -> None:
        scenario = self.scenario
        runtime, events, decl = load_policy(self.policy)
        if decl.test_zones:
            self.warnings.append(
                "the policy's configure_test_resolver is ignored: DNS comes from the scenario"
            )
        mx = MxCache(TestResolver.from_zone_texts(self.network.zone_texts()),
                     nxdomain_bounces=True)  # fmt: skip
        runtime.waits.dns = mx
        egress = PolicyEgress(events)
        smtp = SmtpDispatch(
            policy=egress, mx=mx, resolver=lambda: mx.resolver, clock=self.clock,
            hostname="kumoq.simulated", sources=SourceSelector(egress, self.clock),
            rng=random.Random(scenario.seed + 2),
        )  # fmt: skip
        deliverers: dict[type, Deliverer] = {SmtpProtocol: smtp, MaildirProtocol: _LocalDelivery()}
        queues = QueueManager(
            configs=PolicyQueueConfigs(events), deliverers=deliverers, spool=self.spool,
            records=self.tally, clock=self.clock, rng=random.Random(scenario.seed + 3),
            rules=smtp.rules,
        )  # fmt: skip
        injectors = [
            asyncio.create_task(self._inject(campaign, events, queues))
            for campaign in scenario.campaigns
        ]
        try:
            await self._watch(injectors, queues, smtp)
        finally:
            self.ended_at = self.elapsed()
            for task in injectors:
                task.cancel()
            with _quiet():  # what a shutdown abandons stays queued: that is the forecast
                await queues.close(drain_seconds=0)
                await smtp.close(drain_seconds=0)
                await _cancel_the_rest()

    async def _watch(
        self, injectors: list[asyncio.Task[None]], queues: QueueManager, smtp: SmtpDispatch
    ) -> None:
        """Sample the backlog every ``bucket / SAMPLES_PER_BUCKET`` until every message is
        final or the duration is over."""
        scenario = self.scenario
        step = scenario.bucket / SAMPLES_PER_BUCKET
        tally = self.tally
        while True:
            scheduled = sum(len(queue) for queue in queues.queues())
            ready = sum(count for _, count in smtp.ready_counts())
            tally.sample(scheduled, ready)
            for task in injectors:
                failed = task.exception() if task.done() else None
                if failed is not None:
                    raise failed
            finished = all(task.done() for task in injectors) and tally.pending == 0
            left = scenario.duration - self.elapsed()
            if finished or left <= 0:
                return
            await asyncio.sleep(min(step, left))

    async def _inject(self, campaign: Campaign, events: PolicyEvents, queues: QueueManager) -> None:
        """The campaign's messages, each as reception would take it."""
        await asyncio.sleep(max(0.0, campaign.start - self.elapsed()))
        body = _body(campaign)
        sender = EnvelopeAddress.parse(campaign.sender)
        names = [d for d, _ in campaign.domains]
        drawn = self.rng.choices(names, [w for _, w in campaign.domains], k=campaign.messages)
        meta: dict[str, Any] = dict(campaign.meta)
        if campaign.tenant is not None:
            meta["tenant"] = campaign.tenant
        if campaign.name is not None:
            meta["campaign"] = campaign.name
        tally = self.tally
        fire = self.scenario.message_received
        for i, domain in enumerate(drawn):
            if campaign.rate is not None:
                wait = campaign.start + i / campaign.rate - self.elapsed()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif i and i % INJECT_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            now = self.clock.now()
            msg = Message(
                id=new_spool_id(now),  # unique; its time may be later than now (another run)
                created=now,
                sender=sender,
                recipients=[EnvelopeAddress(f"user{i}", domain)],
                meta=dict(meta),
                data=body,
            )
            tally.injected += 1
            try:
                if fire:
                    await events.smtp_server_message_received(msg, dict(_CONN_META))
                name = msg.queue_name()
                if name == NULL_QUEUE:
                    tally.discarded += 1
                    continue
                await queues.resolve_waiting(name)
            except KumoqError as exc:  # kumo.reject, or a policy that fails: not accepted
                tally.reject(str(exc))
                continue
            self.spool.data[msg.id] = body
            tally.log(RecordType.Reception, msg, response=_ACCEPTED)
            queues.insert(msg)

    def report(self, real_seconds: float) -> dict[str, Any]:
        forecast = self.tally.forecast()
        if any(_NOT_SIMULATED in text for text in self.tally.transient_responses):
            self.warnings.append(
                "custom Lua delivery is not simulated: its messages failed transiently"
            )
        virtual = round(self.ended_at, 3)
        return {
            "policy": str(self.policy),
            "scenario": {
                "messages": self.scenario.messages,
                "duration": self.scenario.duration,
                "campaigns": [_campaign_json(c) for c in self.scenario.campaigns],
            },
            "run": {
                "virtual_seconds": virtual,
                "real_seconds": round(real_seconds, 3),
                "speedup": round(virtual / real_seconds) if real_seconds > 0 else None,
            },
            **forecast,
            "destinations": {
                name: server.stats.to_json() for name, server in self.network.servers.items()
            },
            "warnings": self.warnings,
        }


def _campaign_json(campaign: Campaign) -> dict[str, Any]:
    rate = campaign.rate
    return {
        "name": campaign.name,
        "tenant": campaign.tenant,
        "messages": campaign.messages,
        "rate_per_hour": None if rate is None else rate * 3600,
        "start": campaign.start,
        "domains": dict(campaign.domains),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kumoq's diagnostics below ERROR are muted (the end of a run is not a shutdown)."""
    logger = logging.getLogger("kumoq")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _cancel_the_rest() -> None:
    """Cancel and await every task still running (timers of reaped queues, sessions), so the
    loop closes with none pending."""
    current = asyncio.current_task()
    for _ in range(3):
        rest = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not rest:
            return
        for task in rest:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(rest, timeout=1.0)


def simulate(scenario: Scenario, policy: Path) -> dict[str, Any]:
    """Run ``scenario`` under the policy file ``policy`` on virtual time; the forecast as a
    JSON-ready dict (rendered by ``kumoq.simulate.report``). Raises PolicyError when the
    policy does not load."""
    clock = FakeClock(start=scenario.start_time)
    run = _Run(scenario, policy, clock)
    started = time.perf_counter()
    threshold = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        run_virtual(clock, run.main, run.network)
    finally:
        gc.set_threshold(*threshold)
    return run.report(time.perf_counter() - started)
