"""The composition root: load the policy, open spool and logs, start listeners, run, drain.

Startup follows KumoMTA (reference §1.1): fire ``init``; open the log writers and the spool
(taking its lock); start the listeners, which answer 421 until the spool has been enumerated;
re-queue every spooled message with its persisted schedule; then print
``initialization complete``. SIGTERM or SIGINT stops accepting, lets sessions and attempts in
flight finish, flushes and closes the logs and releases the spool, every wait bounded and
logged (``ShutdownBounds``, from ``KUMOQ_SHUTDOWN_*``; 60 s in all by default).

This module may import anything below it; nothing imports it but the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kumoq.clock import Clock, SystemClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.listener import EsmtpListenerConfig
from kumoq.config.logs import LocalLogsConfig
from kumoq.config.queue import CustomLuaProtocol, MaildirProtocol, QueueConfig, SmtpProtocol
from kumoq.config.spool import SpoolDefinition, check_spool_pair
from kumoq.config.values import parse_duration
from kumoq.delivery.maildir import MaildirDeliverer
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import DnsPythonResolver, Resolver, TestResolver
from kumoq.egress.lua_dispatch import LuaDispatch
from kumoq.egress.maildir_dispatch import MaildirDispatch
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.egress.sources import SourceSelector
from kumoq.errors import ConfigError, KumoqError, SpoolRecordError
from kumoq.logs.logger import RecordLogger
from kumoq.logs.writer import LocalLogWriter
from kumoq.lua.events import PolicyEvents
from kumoq.lua.runtime import PolicyRuntime
from kumoq.message import Message, QueueNameParts
from kumoq.metrics import SPOOL_QUARANTINED
from kumoq.reception import Reception
from kumoq.scheduler.attempt import Deliverer
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.scheduling import parse_scheduling
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from kumoq.spool import open_spool
from kumoq.spool.base import Spool

__all__ = ["Daemon", "Declarations", "ShutdownBounds", "load_policy", "shutdown_bounds"]

log = logging.getLogger("kumoq.daemon")

ENUMERATION_PROGRESS_EVERY = 10_000


@dataclass(slots=True)
class Declarations:
    """What the policy's ``init`` asked for."""

    listeners: list[EsmtpListenerConfig] = field(default_factory=list)
    spools: dict[str, SpoolDefinition] = field(default_factory=dict)
    logs: list[LocalLogsConfig] = field(default_factory=list)
    http_listeners: list[dict[str, Any]] = field(default_factory=list)
    test_zones: list[str] = field(default_factory=list)

    def declare(self, kind: str, value: object) -> None:
        if isinstance(value, EsmtpListenerConfig):
            self.listeners.append(value)
        elif isinstance(value, SpoolDefinition):
            if value.name in self.spools:
                raise ConfigError(f"define_spool: spool {value.name!r} is already defined")
            self.spools[value.name] = value
        elif isinstance(value, LocalLogsConfig):
            self.logs.append(value)
        elif kind == "start_http_listener" and isinstance(value, dict):
            self.http_listeners.append(value)
        elif isinstance(value, _TestZones):
            self.test_zones.extend(value.texts)

    def spool_pair(self) -> tuple[SpoolDefinition, SpoolDefinition]:
        missing = [n for n in ("data", "meta") if n not in self.spools]
        if missing:
            raise ConfigError(
                "define_spool: both a 'data' and a 'meta' spool must be defined in init; "
                f"missing {', '.join(repr(m) for m in missing)}"
            )
        data, meta = self.spools["data"], self.spools["meta"]
        check_spool_pair(data, meta)
        return data, meta


def _http_listener(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ConfigError(f"start_http_listener: expected a table, got {mapping!r}")
    allowed = {
        "listen", "trusted_hosts", "request_body_limit", "use_tls", "hostname",
        "tls_certificate", "tls_private_key",
    }  # fmt: skip
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"start_http_listener: unknown key {unknown[0]!r}; "
            f"allowed keys are: {', '.join(sorted(allowed))}"
        )
    return dict(mapping)


@dataclass(frozen=True, slots=True)
class _TestZones:
    texts: tuple[str, ...]


def _test_resolver(mapping: Any) -> _TestZones:
    """``kumo.dns.configure_test_resolver``: zone texts, checked by parsing them now."""
    zones = mapping.get("zones") if isinstance(mapping, dict) else None
    if isinstance(zones, str):
        zones = [zones]
    if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
        raise ConfigError(f"configure_test_resolver: expected zone text, got {zones!r}")
    TestResolver.from_zone_texts(zones)  # a syntax error names the policy line
    return _TestZones(tuple(zones))


BUILDERS = {
    "configure_test_resolver": _test_resolver,
    "start_esmtp_listener": EsmtpListenerConfig.from_mapping,
    "define_spool": SpoolDefinition.from_mapping,
    "configure_local_logs": LocalLogsConfig.from_mapping,
    "make_queue_config": QueueConfig.from_mapping,
    "make_egress_pool": EgressPool.from_mapping,
    "make_egress_source": EgressSource.from_mapping,
    "make_egress_path": EgressPathConfig.from_mapping,
    "start_http_listener": _http_listener,
}


def load_policy(path: Path) -> tuple[PolicyRuntime, PolicyEvents, Declarations]:
    """Load the policy file and run its ``init``; raises PolicyError naming file and line."""
    declarations = Declarations()
    runtime = PolicyRuntime(path, builders=BUILDERS, declare=declarations.declare)
    runtime.fire_init()
    declarations.spool_pair()
    return runtime, PolicyEvents(runtime), declarations


class _PolicyEgress:
    """``EgressPolicy`` through the policy's events (reference §2.1, §2.4)."""

    def __init__(self, events: PolicyEvents) -> None:
        self._events = events

    def _made(self, event: str, kind: type, name: str) -> Any:
        if not self._events.has_handler(event):
            raise ConfigError(f"{event} is not defined, so the egress {kind.__name__} "
                              f"{name!r} cannot be resolved")  # fmt: skip
        value = self._events.call(event, name)
        if not isinstance(value, kind):
            maker = f"make_egress_{kind.__name__[6:].lower()}"
            raise ConfigError(f"{event}({name!r}) must return kumo.{maker}{{...}}, "
                              f"got {value!r}")  # fmt: skip
        return value

    def get_egress_pool(self, name: str) -> EgressPool:
        pool: EgressPool = self._made("get_egress_pool", EgressPool, name)
        return pool

    def get_egress_source(self, name: str) -> EgressSource:
        source: EgressSource = self._made("get_egress_source", EgressSource, name)
        return source

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig | None:
        if not self._events.has_handler("get_egress_path_config"):
            return None
        value = self._events.call("get_egress_path_config", routing_domain, source, site_name)
        if value is not None and not isinstance(value, EgressPathConfig):
            raise ConfigError(
                f"get_egress_path_config must return kumo.make_egress_path{{...}}, got {value!r}"
            )
        return value


class _PolicyQueueConfigs:
    def __init__(self, events: PolicyEvents) -> None:
        self._events = events

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig | None:
        return self._events.get_queue_config(
            parts.domain, parts.tenant, parts.campaign, parts.routing_domain
        )


def _node_id(meta_spool: SpoolDefinition) -> str:
    env = os.environ.get("KUMO_NODE_ID")
    if env:
        return env
    path = Path(meta_spool.path).parent / ".kumoq-nodeid"
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        node = str(uuid.uuid4())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node + "\n")
        return node


@dataclass(frozen=True, slots=True)
class ShutdownBounds:
    """How long each shutdown phase may take, in seconds (docs/operations.md#shutdown).

    ``total`` (60 s by default) bounds SIGTERM to exit: past it a watchdog ends the process
    (status 1). ``flush`` covers the maildir writer, the spool's and the logs' last batch,
    and the unwinding (``_GRACE``) of what the drains aborted."""

    listener_drain: float = 25.0
    delivery_drain: float = 25.0
    flush: float = 10.0

    @property
    def total(self) -> float:
        return self.listener_drain + self.delivery_drain + self.flush


_GRACE: Final = 2.0
SHUTDOWN_ENV: Final = {
    "listener_drain": "KUMOQ_SHUTDOWN_LISTENER_DRAIN",
    "delivery_drain": "KUMOQ_SHUTDOWN_DELIVERY_DRAIN",
    "flush": "KUMOQ_SHUTDOWN_FLUSH",
}


def shutdown_bounds(environ: Mapping[str, str]) -> ShutdownBounds:
    """The bounds from the environment: seconds (``2.5``) or a duration (``30s``)."""
    values: dict[str, float] = {}
    for key, name in SHUTDOWN_ENV.items():
        text = environ.get(name, "").strip()
        if text:
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = parse_duration(name, text)
            if not 0 <= values[key] < math.inf:
                raise ConfigError(f"{name}: expected seconds >= 0 or a duration, got {text!r}")
    return ShutdownBounds(**values)


def _watchdog(bound: float, waiting_for: list[str]) -> threading.Timer:
    """End the process if the shutdown overruns ``bound``, even with the event loop stuck.
    Every message that got 250 is on disk; log records still queued are lost."""

    def overrun() -> None:
        log.error("shutdown: not complete after its bound of %gs, still waiting for %s; "
                  "exiting now (messages not delivered stay spooled for the next start)",
                  bound, waiting_for[0])  # fmt: skip
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(bound, overrun)
    timer.daemon = True
    timer.start()
    return timer


async def _within(seconds: float, awaitable: Awaitable[Any]) -> None:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        log.error("shutdown: the listeners did not close within %gs; going on", seconds)


class Daemon:
    """One running kumoq: ``await Daemon(policy).run(stop_event)``."""

    def __init__(self, policy_path: Path, *, clock: Clock | None = None) -> None:
        self.policy_path = policy_path
        self.clock = clock or SystemClock()
        self.listeners: list[EsmtpListener] = []

    async def run(self, stop: asyncio.Event) -> None:
        bounds = shutdown_bounds(os.environ)
        runtime, events, decl = load_policy(self.policy_path)
        data_def, meta_def = decl.spool_pair()
        if decl.http_listeners:
            log.warning("start_http_listener: the HTTP listener is not available in this build")

        # The spool lock comes first: a second instance must fail before it touches anything
        # the running one owns (its log segments included).
        spool: Spool = open_spool(data_def, meta_def)
        await spool.start()
        nodeid = await asyncio.to_thread(_node_id, meta_def)
        writers = [LocalLogWriter(cfg) for cfg in decl.logs]
        try:
            for writer in writers:
                await asyncio.to_thread(writer.start)
        except BaseException:
            await spool.close()
            raise
        records = RecordLogger(list(zip(writers, decl.logs, strict=True)), nodeid, self.clock)
        maildir = MaildirDeliverer()
        resolver: Resolver = (
            TestResolver.from_zone_texts(decl.test_zones)
            if decl.test_zones
            else DnsPythonResolver()
        )
        if decl.test_zones:
            log.info("DNS answers come from the test resolver (configure_test_resolver)")
        mx = MxCache(resolver, nxdomain_bounces=True)  # issue 4: NXDOMAIN bounces
        runtime.waits.dns = mx  # kumo.dns.lookup_mx shares the delivery's MX cache
        hostname = decl.listeners[0].hostname if decl.listeners else None
        egress_policy = _PolicyEgress(events)
        sources = SourceSelector(egress_policy, self.clock)  # shared: one cache, one WRR
        smtp = SmtpDispatch(
            policy=egress_policy, mx=mx, resolver=lambda: mx.resolver,
            clock=self.clock, hostname=hostname, sources=sources,
        )  # fmt: skip
        lua = LuaDispatch(runtime, clock=self.clock, sources=sources)
        deliverers: dict[type, Deliverer] = {
            MaildirProtocol: MaildirDispatch(maildir),
            SmtpProtocol: smtp,
            CustomLuaProtocol: lua,
        }
        queues = QueueManager(
            configs=_PolicyQueueConfigs(events),
            deliverers=deliverers,
            spool=spool,
            records=records,
            clock=self.clock,
        )
        receptions = [
            Reception(
                events=events,
                spool=spool,
                queues=queues,
                records=records,
                clock=self.clock,
                hostname=cfg.hostname,
                received_header=cfg.trace_headers.received_header,
            )
            for cfg in decl.listeners
        ]
        try:
            for cfg, reception in zip(decl.listeners, receptions, strict=True):
                self.listeners.append(await start_esmtp_listener(cfg, reception))
            await self._enumerate(spool, queues)
            for reception in receptions:
                reception.set_ready()
            log.info("initialization complete")
            await stop.wait()
            log.info("shutting down: draining sessions and deliveries")
        finally:
            await self._shutdown(bounds, smtp, lua, queues, (maildir, spool, writers))

    async def _shutdown(
        self,
        bounds: ShutdownBounds,
        smtp: SmtpDispatch,
        lua: LuaDispatch,
        queues: QueueManager,
        local: tuple[MaildirDeliverer, Spool, list[LocalLogWriter]],
    ) -> None:
        """Every wait bounded and logged, the whole within ``bounds.total`` (a watchdog ends
        the process past it). What is abandoned stays spooled for the next start."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        waiting_for = ["the SMTP listeners to drain"]
        watchdog = _watchdog(bounds.total, waiting_for)
        try:
            log.info(
                "shutdown: bound %gs: listener drain %gs, delivery drain %gs, flush %gs",
                bounds.total, bounds.listener_drain, bounds.delivery_drain, bounds.flush,
            )  # fmt: skip
            if self.listeners:
                sessions = sum(len(listener.connections) for listener in self.listeners)
                log.info("shutdown: waiting up to %gs for %d SMTP sessions to end",
                         bounds.listener_drain, sessions)  # fmt: skip
                started = loop.time()
                closing = (listener.close(bounds.listener_drain) for listener in self.listeners)
                await _within(bounds.listener_drain + _GRACE, asyncio.gather(*closing))
                log.info("shutdown: listeners closed in %.1fs", loop.time() - started)
            waiting_for[0] = "delivery attempts in flight"
            attempts = sum(queue.in_flight for queue in queues.queues())
            log.info("shutdown: waiting up to %gs for %d delivery attempts in flight",
                     bounds.delivery_drain, attempts)  # fmt: skip
            started, drain = loop.time(), bounds.delivery_drain
            closed = queues.close(drain + _GRACE), smtp.close(drain), lua.close(drain)
            for result in await asyncio.gather(*closed, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("shutdown: closing deliveries failed: %r", result)
            log.info("shutdown: deliveries ended in %.1fs", loop.time() - started)
            waiting_for[0] = "the maildir writer, the spool and the logs to flush"
            log.info("shutdown: flushing the maildir writer, the spool and the logs")
            maildir, spool, writers = local
            await maildir.close()
            await spool.close()
            for writer in writers:
                await asyncio.to_thread(writer.close)
            log.info("shutdown complete in %.1fs", loop.time() - began)
        finally:
            watchdog.cancel()

    async def _enumerate(self, spool: Spool, queues: QueueManager) -> None:
        """Re-queue every spooled message with its persisted attempts and due time.

        A record that cannot be read back is quarantined (docs/operations.md, "Spool
        quarantine") with one log line and a count in ``spool_quarantined``; the others start
        normally. A spool that cannot be read at all raises SpoolError."""
        count = quarantined = 0
        async for spool_id, meta in spool.enumerate():
            try:
                msg = _spooled_message(spool_id, meta)
            except Exception as exc:  # one bad record must never stop the start
                quarantined += await _quarantine(spool, spool_id, exc)
                continue
            queues.insert(msg, InsertContext(InsertReason.Enumerated))
            count += 1
            if count % ENUMERATION_PROGRESS_EVERY == 0:
                log.info("spool enumeration: %d messages re-queued so far", count)
        more = f", {quarantined} quarantined" if quarantined else ""
        log.info("spool enumeration complete: %d messages re-queued%s", count, more)


def _spooled_message(spool_id: str, meta: bytes) -> Message:
    """The message of one enumerated record; SpoolRecordError names what is wrong with it."""
    msg = Message.from_spool_bytes(spool_id, meta)
    if msg.schedule is not None:
        try:
            parse_scheduling(msg.schedule)  # what set_scheduling accepts, and only that
        except ConfigError as exc:
            raise SpoolRecordError("schedule", str(exc)) from None
    return msg


async def _quarantine(spool: Spool, spool_id: str, exc: Exception) -> int:
    """Move one unreadable record aside and say so; 1 if it was moved, 0 if it stays."""
    if isinstance(exc, SpoolRecordError):
        reason, label = str(exc), exc.field
    else:  # a bug in the validation: keep the traceback for the report
        log.error("spool entry %s: unexpected error reading it", spool_id, exc_info=exc)
        reason, label = f"{type(exc).__name__}: {exc}", "unexpected"
    try:
        await spool.quarantine(spool_id, reason)
    except KumoqError as err:
        log.error("spool entry %s is unreadable (%s) and could not be quarantined: %s; it "
                  "stays in the spool, not queued", spool_id, reason, err)  # fmt: skip
        return 0
    SPOOL_QUARANTINED.labels(spool="meta", reason=label).inc()
    log.error("spool entry %s is unreadable (%s); moved to the spool's quarantine",
              spool_id, reason)  # fmt: skip
    return 1
