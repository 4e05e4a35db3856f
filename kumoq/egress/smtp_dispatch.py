"""SMTP delivery through egress pools, sources and ready queues (reference §1.6-1.9).

``SmtpDispatch`` implements the queue manager's ``Deliverer`` seam for ``protocol = {smtp=...}``:

1. The scheduled queue's ``egress_pool`` (``unspecified`` by default) is fetched through the
   policy (``get_egress_pool``, cached for its ``ttl``), and a source is picked by weighted round
   robin, one state per scheduled queue (LVS, §1.6c).
2. The site name comes from ``mx_list`` or from the routing domain's MX records (§1.7); the
   ready queue ``<source>-><site>@smtp_client`` is created on first use, with its path config
   from ``get_egress_path_config`` (refreshed every ``refresh_interval``).
3. The message waits in the ready queue's priority FIFO (``max_ready``; when full it goes back to
   its scheduled queue for a random 0-60 s, attempts not incremented). Dispatchers, up to the
   ideal-connection curve capped at ``connection_limit``, deliver over reused sessions
   (``max_deliveries_per_connection``, RSET between, ``idle_timeout``), honouring the path's
   ``max_message_rate`` and ``max_connection_rate`` (sleep inline or requeue, §3.4).
4. The SMTP response becomes the message's ``Attempt`` (Delivery, TransientFailure, Bounce) with
   the record fields KumoMTA logs (site, peer_address, egress_pool/source, source_address, TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.config.egress import UNSPECIFIED, EgressPathConfig, EgressSource
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.config.values import ThrottleSpec
from kumoq.delivery.smtp import ConnectFailure, SmtpClientSession
from kumoq.dns.resolver import DnsStatus, MxCache, MxFailure, Resolver
from kumoq.dns.site_name import MailExchanger
from kumoq.egress.names import mx_list_site_name, ready_queue_name
from kumoq.egress.ready import (
    ConnectionFailureTracker,
    ReadyFifo,
    RequeueQueue,
    SleepInline,
    ideal_connection_count,
    throttle_decision,
)
from kumoq.egress.sources import EgressSources, SourceSelector
from kumoq.errors import KumoqError, PolicyWouldBlock
from kumoq.logs.records import RecordType, Response, SourceAddress
from kumoq.message import Message, parse_queue_name, priority_of
from kumoq.scheduler.attempt import POLICY_WAIT_RERUNS, Attempt
from kumoq.scheduler.context import InsertReason
from kumoq.throttle import Throttle

__all__ = ["EgressPolicy", "ReadyQueue", "SmtpDispatch"]

log = logging.getLogger("kumoq.egress.names")

SMTP_PROTO: Final = "smtp_client"


class EgressPolicy(EgressSources, Protocol):
    """The policy events egress needs (kumoq.lua.events implements them through the daemon)."""

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig | None: ...


@dataclass(slots=True)
class _Item:
    msg: Message
    future: asyncio.Future[Attempt]


@dataclass(slots=True)
class _Target:
    name: str
    addr: str
    port: int | None


def _transient(
    content: str, code: int = 451, enhanced: tuple[int, int, int] | None = (4, 4, 4)
) -> Response:
    return Response(code=code, enhanced_code=enhanced, content=content, command=None)


@dataclass(eq=False)
class ReadyQueue:
    """One egress path: ``<source>-><site>@smtp_client``."""

    name: str
    source: EgressSource
    pool: str
    site_name: str
    routing_domain: str
    exchanger: MailExchanger | None
    mx_list: tuple[Any, ...] | None
    path: EgressPathConfig
    path_until: float
    fifo: ReadyFifo[_Item] = field(init=False)
    dispatchers: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failures: ConnectionFailureTracker = field(init=False)

    def __post_init__(self) -> None:
        self.fifo = ReadyFifo(self.path.max_ready)
        self.failures = ConnectionFailureTracker(
            self.path.consecutive_connection_failures_before_delay
        )


class SmtpDispatch:
    """``Deliverer`` for ``protocol = {smtp = ...}``: egress selection, ready queues, sessions."""

    def __init__(
        self,
        *,
        policy: EgressPolicy,
        mx: MxCache,
        resolver: Callable[[], Resolver],
        clock: Clock,
        hostname: str | None = None,
        throttle: Throttle | None = None,
        rng: random.Random | None = None,
        sources: SourceSelector | None = None,
    ) -> None:
        self._policy = policy
        self._mx = mx
        self._resolver = resolver
        self._clock = clock
        self._hostname = hostname or socket.gethostname()
        self._throttle = throttle or Throttle()
        self._rng = rng or random.Random()
        self._sources = sources or SourceSelector(policy, clock)
        self._ready: dict[str, ReadyQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- the Deliverer seam -------------------------------------------------------------------

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, SmtpProtocol)
        picked: dict[str, str | None] = {}  # the source chosen on the first run, for re-runs
        for _ in range(POLICY_WAIT_RERUNS):
            try:
                ready = await self._ready_queue_for(msg, config, protocol, picked)
                break
            except PolicyWouldBlock as wait:  # an egress event waits for kumo.dns.lookup_mx
                await wait.wait()
            except KumoqError as exc:
                return Attempt(RecordType.TransientFailure, _transient(f"KumoMTA internal: {exc}"))
        else:
            return Attempt(
                RecordType.TransientFailure,
                _transient("KumoMTA internal: the egress events kept waiting for DNS"),
            )
        if isinstance(ready, Attempt):
            return ready
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        if not ready.fifo.try_push(_Item(msg, future), priority_of(msg)):
            return Attempt(
                RecordType.Delayed,
                _transient("ready queue is full", 400, None),
                requeue_delay=float(self._rng.randrange(60)),
                reason=InsertReason.ReadyQueueWasFull,
            )
        self._spawn_dispatchers(ready)
        ready.wake.set()
        return await future

    # -- selection ----------------------------------------------------------------------------

    async def _ready_queue_for(
        self,
        msg: Message,
        config: QueueConfig,
        protocol: SmtpProtocol,
        picked: dict[str, str | None],
    ) -> ReadyQueue | Attempt:
        queue_name = msg.queue_name()
        parts = parse_queue_name(queue_name)
        routing_domain = parts.routing_domain or parts.domain
        pool_name = config.egress_pool or UNSPECIFIED
        pool = self._sources.pool(pool_name)
        if queue_name in picked:  # a re-run after a DNS wait keeps its round-robin turn
            source_name = picked[queue_name]
        else:
            source_name = picked[queue_name] = self._sources.pick(queue_name, pool)
        if source_name is None:
            return Attempt(
                RecordType.TransientFailure,
                _transient(f"KumoMTA internal: no sources available for {queue_name} "
                           f"pool=`{pool_name}`"),
            )  # fmt: skip
        source = self._sources.source(source_name)
        exchanger: MailExchanger | None = None
        if protocol.mx_list:
            site = mx_list_site_name(protocol.mx_list)
        else:
            result = await self._mx.lookup_mx(routing_domain, self._clock.now())
            if isinstance(result, MxFailure):
                if result.permanent:
                    code, enhanced = result.code, tuple(int(x) for x in result.enhanced.split("."))
                    return Attempt(
                        RecordType.Bounce,
                        Response(code, enhanced, result.text, None),  # type: ignore[arg-type]
                    )
                return Attempt(
                    RecordType.TransientFailure,
                    _transient(f"failed to resolve queue {queue_name}: {result.detail}"),
                )
            exchanger = result
            site = result.site_name
        name = ready_queue_name(source.name, site, SMTP_PROTO)
        ready = self._ready.get(name)
        if ready is not None:
            ready.source = source  # a refreshed source applies to the next connection
        now = self._clock.monotonic()
        if ready is None or now >= ready.path_until:
            path = (
                self._policy.get_egress_path_config(routing_domain, source.name, site)
                or EgressPathConfig()
            )
            if ready is None:
                ready = ReadyQueue(
                    name=name,
                    source=source,
                    pool=pool_name,
                    site_name=site,
                    routing_domain=routing_domain,
                    exchanger=exchanger,
                    mx_list=protocol.mx_list,
                    path=path,
                    path_until=now + path.refresh_interval,
                )
                self._ready[name] = ready
            else:
                ready.path = path
                ready.path_until = now + path.refresh_interval
        return ready

    # -- dispatchers --------------------------------------------------------------------------

    def _spawn_dispatchers(self, ready: ReadyQueue) -> None:
        if self._closing:
            return
        ideal = ideal_connection_count(len(ready.fifo), ready.path.connection_limit.limit)
        ideal = min(max(ideal, 1), ready.path.connection_limit.limit)
        while ready.dispatchers < ideal:
            ready.dispatchers += 1
            task = asyncio.ensure_future(self._dispatch(ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _attempt(self, ready: ReadyQueue, disposition: RecordType, response: Response,
                 session: SmtpClientSession | None = None) -> Attempt:  # fmt: skip
        extra: dict[str, Any] = {
            "egress_pool": ready.pool,
            "egress_source": ready.source.name,
        }
        peer = None
        session_id = None
        if session is not None:
            peer = session.peer
            session_id = session.session_id
            extra["source_address"] = SourceAddress(address=session.source_address)
            if session.tls is not None:
                extra["tls_cipher"] = session.tls.cipher
                extra["tls_protocol_version"] = session.tls.protocol_version
                extra["tls_peer_subject_name"] = session.tls.peer_subject_name
        return Attempt(
            disposition,
            response,
            site=ready.name,
            delivery_protocol="ESMTP",
            peer_address=peer,
            session_id=session_id,
            extra=extra,
        )

    async def _dispatch(self, ready: ReadyQueue) -> None:
        session: SmtpClientSession | None = None
        delivered = 0
        try:
            while not self._closing:
                item = ready.fifo.pop()
                if item is None:
                    if session is None:
                        return
                    ready.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(ready.path.idle_timeout):
                            await ready.wake.wait()
                    if not len(ready.fifo):
                        return
                    continue
                if item.future.done():
                    continue
                path = ready.path
                if path.max_message_rate is not None and not await self._admit(
                    ready, item, f"kumomta.max_message_rate.{ready.name}",
                    path.max_message_rate, InsertReason.MessageRateThrottle,
                ):  # fmt: skip
                    return
                if session is not None and not session.reusable:
                    session.abort()  # the server hung up (or spoke unasked) while idle
                    await session.quit()
                    session = None
                if session is None:
                    if path.max_connection_rate is not None and not await self._admit(
                        ready, item, f"{ready.name}-connection-rate",
                        path.max_connection_rate, InsertReason.ConnectionRateThrottle,
                    ):  # fmt: skip
                        return
                    try:
                        connected = await self._connect(ready)
                    except Exception as exc:  # a bug: fail this attempt, never strand it
                        log.exception("ready queue %s: connecting failed unexpectedly", ready.name)
                        connected = Attempt(
                            RecordType.TransientFailure,
                            _transient(f"KumoMTA internal: connecting failed: {exc!r}"),
                        )
                    if isinstance(connected, Attempt):
                        item.future.set_result(connected)
                        if ready.failures.record_failure():
                            self._bulk_transfail(ready)
                        return
                    ready.failures.record_success()
                    session = connected
                    delivered = 0
                try:
                    outcome = await session.deliver(item.msg)
                except Exception as exc:  # a bug: fail this attempt, never strand it
                    log.exception("ready queue %s: delivery failed unexpectedly", ready.name)
                    session.abort()
                    if not item.future.done():
                        item.future.set_result(
                            Attempt(
                                RecordType.TransientFailure,
                                _transient(f"KumoMTA internal: delivery failed: {exc!r}"),
                            )
                        )
                    return
                first = outcome.recipients[0]
                if not item.future.done():
                    item.future.set_result(
                        self._attempt(ready, first.disposition, first.response, session)
                    )
                delivered += 1
                if delivered >= path.max_deliveries_per_connection or session.closed:
                    await session.quit()
                    session = None
        finally:
            ready.dispatchers -= 1
            if session is not None:
                await session.quit()
            if len(ready.fifo) and not self._closing:
                self._spawn_dispatchers(ready)

    async def _admit(
        self, ready: ReadyQueue, item: _Item, key: str, spec: ThrottleSpec, reason: InsertReason
    ) -> bool:
        """Wait for the path throttle ``spec``: sleep inline while the wait is shorter than
        ``idle_timeout`` (checking again after each sleep), else requeue the whole ready queue
        and return False (§3.4)."""
        while True:
            result = self._throttle.check(key, spec, self._clock.now())
            decision = throttle_decision(result, ready.path.idle_timeout)
            if isinstance(decision, SleepInline):
                await asyncio.sleep(decision.seconds)
                continue
            if isinstance(decision, RequeueQueue):
                self._requeue_all(ready, item, decision.delay, reason)
                return False
            return True

    def _requeue_all(
        self, ready: ReadyQueue, item: _Item, delay: float, reason: InsertReason
    ) -> None:
        """A path throttle asks for longer than ``idle_timeout``: every waiting message goes
        back to its scheduled queue with ``delay`` (attempts not incremented)."""
        for it in [item, *ready.fifo.drain()]:
            if not it.future.done():
                it.future.set_result(
                    Attempt(
                        RecordType.Delayed,
                        _transient("throttled", 400, None),
                        requeue_delay=delay,
                        reason=reason,
                    )
                )

    def _bulk_transfail(self, ready: ReadyQueue) -> None:
        response = _transient(
            "bulk delay of ready queue: too many successive connection failures where there "
            "was no answer from any hosts listed in MX",
            enhanced=(4, 4, 1),
        )
        for it in ready.fifo.drain():
            if not it.future.done():
                it.future.set_result(self._attempt(ready, RecordType.TransientFailure, response))

    # -- connection plans ---------------------------------------------------------------------

    async def _plan(self, ready: ReadyQueue) -> list[_Target] | Attempt:
        resolver = self._resolver()
        names: list[tuple[str, str | None, int | None]] = []  # (name, addr, port)
        if ready.mx_list:
            for entry in ready.mx_list:
                if isinstance(entry, dict):
                    addr, _, port = str(entry["addr"]).rpartition(":")
                    if not addr or "]" in port:
                        addr, port = str(entry["addr"]), ""
                    names.append(
                        (
                            str(entry.get("name") or addr),
                            addr.strip("[]"),
                            int(port) if port else None,
                        )
                    )
                    continue
                text = str(entry)
                host, sep, port = text.rpartition(":")
                if not sep or "]" in port or not port.isdigit():
                    host, port = text, ""
                if host.startswith("[") and host.endswith("]"):
                    names.append((host, host[1:-1], int(port) if port else None))
                else:
                    names.append((host, None, int(port) if port else None))
        else:
            assert ready.exchanger is not None
            for hosts in ready.exchanger.by_pref.values():
                shuffled = list(hosts)
                self._rng.shuffle(shuffled)
                for host in shuffled:
                    hostname, _, mx_port = host.partition(":")
                    names.append((hostname, None, int(mx_port) if mx_port.isdigit() else None))
        targets: list[_Target] = []
        for target_name, target_addr, target_port in names:
            if target_addr is not None:
                targets.append(_Target(target_name, target_addr, target_port))
                continue
            try:
                ipaddress.ip_address(target_name)
                targets.append(_Target(target_name, target_name, target_port))
                continue
            except ValueError:
                pass
            answer = await resolver.resolve_ip(target_name)
            if answer.status is DnsStatus.FOUND:
                targets.extend(_Target(target_name, a, target_port) for a in answer.addresses)
        path = ready.path
        for t in targets:
            ip = ipaddress.ip_address(t.addr)
            if any(ip in net for net in path.prohibited_hosts):
                return self._attempt(
                    ready,
                    RecordType.Bounce,
                    Response(550, (5, 4, 4), f"{t.addr} is on the list of prohibited_hosts", None),
                )
        before = len(targets)
        targets = [
            t for t in targets
            if not any(ipaddress.ip_address(t.addr) in net for net in path.skip_hosts)
        ]  # fmt: skip
        if not targets:
            content = (
                "KumoMTA internal: MX consisted solely of hosts on the skip_hosts list"
                if before
                else "MX didn't resolve to any hosts"
            )
            return self._attempt(ready, RecordType.TransientFailure, _transient(content))
        return targets

    async def _connect(self, ready: ReadyQueue) -> SmtpClientSession | Attempt:
        plan = await self._plan(ready)
        if isinstance(plan, Attempt):
            return plan
        path = ready.path
        ehlo = path.ehlo_domain or ready.source.ehlo_domain or self._hostname
        errors: list[str] = []
        for target in plan:
            port = ready.source.remote_port or target.port or path.smtp_port
            result = await SmtpClientSession.connect(
                target.name, target.addr, port, path=path, source=ready.source, ehlo_domain=ehlo
            )
            if not isinstance(result, ConnectFailure):
                return result
            errors.append(f"{target.name} {target.addr}:{port}: {result.reason}")
        return self._attempt(
            ready,
            RecordType.TransientFailure,
            _transient(
                "KumoMTA internal: failed to connect to any candidate hosts: " + "; ".join(errors),
                code=400,
                enhanced=None,
            ),
        )

    async def close(self) -> None:
        """Stop dispatching; messages waiting in ready queues stay spooled for the next start."""
        self._closing = True
        for ready in self._ready.values():
            for it in ready.fifo.drain():
                if not it.future.done():
                    it.future.cancel()
            ready.wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
