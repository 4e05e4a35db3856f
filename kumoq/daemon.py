"""The composition root: load the policy, open spool and logs, start listeners, run, drain.

Startup follows KumoMTA (reference §1.1): fire ``init``, then ``validate_config`` (kumoq's
addition: KumoMTA fires it only for ``kumod --validate``); open the log writers and the spool
(taking its lock); start the listeners, which answer 421 until the spool has been enumerated;
re-queue every spooled message with its persisted schedule; then print
``initialization complete``. SIGTERM or SIGINT stops accepting, lets sessions and attempts in
flight finish, flushes and closes the logs and releases the spool, every wait bounded and
logged (``ShutdownBounds``, from ``KUMOQ_SHUTDOWN_*``; 60 s in all by default).
Under ``kumoq harness`` (``KUMOQ_HARNESS_MX`` set) kumoq.harness_mode rewrites listeners and
paths, answers DNS and reroutes SMTP deliveries to the harness's sink.

This module may import anything below it; nothing imports it but the CLI.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from kumoq.admin import AdminService, CampaignProgress
from kumoq.clock import Clock, SystemClock
from kumoq.config.queue import CustomLuaProtocol, MaildirProtocol, SmtpProtocol
from kumoq.config.spool import SpoolDefinition
from kumoq.declarations import (
    CurrentLuaConnections,
    Declarations,
    PolicyEgress,
    PolicyQueueConfigs,
    PolicyRequeue,
    load_policy,
)
from kumoq.delivery.maildir import MaildirDeliverer
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import DnsPythonResolver, Resolver, TestResolver
from kumoq.egress.lua_dispatch import LuaDispatch
from kumoq.egress.maildir_dispatch import MaildirDispatch
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.egress.sources import SourceSelector
from kumoq.errors import ConfigError, KumoqError, SpoolRecordError
from kumoq.gauges import LiveGauges
from kumoq.harness_mode import HarnessMode, RerootedMaildir
from kumoq.http import HttpListener, HttpServices, start_http_listener, start_worker_listener
from kumoq.logs.hooks import HookTargets, LogHooks
from kumoq.logs.logger import RecordLogger
from kumoq.logs.writer import LocalLogWriter
from kumoq.lua.events import PolicyEvents
from kumoq.message import Message
from kumoq.metrics import REGISTRY, SPOOL_QUARANTINED
from kumoq.reception import Reception
from kumoq.scheduler.attempt import Deliverer
from kumoq.scheduler.dead_letters import DEAD_LETTER_KEY, dead_letter_block
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.scheduled import ScheduledQueue
from kumoq.scheduler.scheduling import parse_scheduling
from kumoq.shutdown import GRACE, ShutdownBounds, shutdown_bounds, watchdog, within
from kumoq.smtp.server import EsmtpListener, start_esmtp_listener
from kumoq.spool import open_worker_spool, worker_spool_pair
from kumoq.spool.base import Spool
from kumoq.spool.health import FreeSpaceMonitor
from kumoq.spool_record import spooled_message
from kumoq.throttle import Throttle
from kumoq.worker_limits import open_worker_throttles
from kumoq.workers import WorkerSlot

__all__ = ["Daemon"]

log = logging.getLogger("kumoq.daemon")

ENUMERATION_PROGRESS_EVERY = 10_000
ENUMERATION_BATCH = 1_000  # messages re-queued together (QueueRegistry.insert_enumerated)


def _node_id(meta_spool: SpoolDefinition) -> str:
    env = os.environ.get("KUMO_NODE_ID")
    if env:
        return env
    path = Path(meta_spool.path).parent / ".kumoq-nodeid"
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        pass
    # Workers starting together must agree: the first link wins, the others read it.
    node = str(uuid.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(node + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        try:
            return str(uuid.UUID(path.read_text().strip()))
        except ValueError:  # a damaged file from an older run: replace it
            os.replace(tmp, path)
            return node
    finally:
        tmp.unlink(missing_ok=True)
    return node


def _listing(path: str) -> list[str]:
    """The names at the top of ``path`` (none when it does not exist yet)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


DEAD_MARK = f'"{DEAD_LETTER_KEY}"'.encode()  # a meta record that may be a dead letter


@dataclass(frozen=True, slots=True)
class _Live:
    """What a reload swaps or refreshes."""

    events: PolicyEvents
    decl: Declarations
    mx: MxCache
    sources: SourceSelector
    smtp: SmtpDispatch
    lua: LuaDispatch
    queues: QueueManager


class Daemon:
    """One running kumoq: ``await Daemon(policy).run(stop_event)``; ``request_reload()`` (SIGHUP)
    loads the policy again."""

    def __init__(self, policy_path: Path, *, clock: Clock | None = None) -> None:
        self.policy_path = policy_path
        self.clock = clock or SystemClock()
        self.listeners: list[EsmtpListener] = []
        self.http_listeners: list[HttpListener] = []
        self.config_epoch = 0
        self._live: _Live | None = None
        self._reload_wanted = asyncio.Event()
        self._harness: HarnessMode | None = None  # KUMOQ_HARNESS_MX: run by `kumoq harness`
        # One throttle state for the process: egress paths, queues and kumo.make_throttle
        # (an additional_* name or a make_throttle name is one key everywhere); kept on reload.
        self._throttle = Throttle()
        # kumoq serve --workers N: this process's place among the workers (kumoq.workers)
        self.slot = WorkerSlot.from_env(os.environ)

    def request_reload(self) -> None:
        """Reload the policy soon (SIGHUP, ``kumo.bump_config_epoch``); requests made while a
        reload is pending are one reload."""
        self._reload_wanted.set()

    def reload(self) -> bool:
        """Load and validate the policy file again; on success fire every event in it from now
        on and refresh every queue and egress config. On failure keep the running policy and
        log why. Listeners, spools and spooled messages stay as they are."""
        live = self._live
        if live is None:
            log.warning("reload: not running yet; ignored")
            return False
        try:
            runtime, _events, decl = load_policy(self.policy_path, serving=True)
        except KumoqError as exc:
            log.error("reload: the policy %s failed, the running policy stays: %s",
                      self.policy_path, exc)  # fmt: skip
            return False
        decl.on_bump_config_epoch = self.request_reload
        if self._harness is not None:
            self._harness.apply(decl)
        changed = live.decl.restart_only_changes(decl)
        if changed:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(changed))  # fmt: skip
        runtime.waits.dns = live.mx
        runtime.waits.throttle = self._throttle
        live.events.swap(runtime)
        live.sources.expire()
        live.smtp.expire_paths()
        live.lua.expire_paths()
        queues = live.queues.refresh_configs()
        self.config_epoch += 1
        log.info("reload: policy %s loaded (config epoch %d); %d queue configs refreshed, "
                 "egress configs refresh at their next use",
                 self.policy_path, self.config_epoch, queues)  # fmt: skip
        return True

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            try:
                self.reload()
            except Exception:  # a bug: the daemon runs on with the policy it has
                log.exception("reload failed unexpectedly; the running policy stays")

    async def run(self, stop: asyncio.Event) -> None:
        bounds = shutdown_bounds(os.environ)
        runtime, events, decl = load_policy(self.policy_path, serving=True)  # + validate_config
        decl.on_bump_config_epoch = self.request_reload
        shared = await open_worker_throttles(decl.redis_throttles, self._throttle, self.slot)
        self._throttle = shared.throttle  # through redis, or the files of the workers
        harness = self._harness = HarnessMode.from_env(os.environ)
        if harness is not None:  # docs/testing.md, "How the harness routes mail"
            harness.apply(decl)
            log.warning("%s", harness.describe())
        data_def, meta_def = decl.spool_pair()

        # The spool lock comes first: a second instance must fail before it touches anything
        # the running one owns (its log segments included).
        # kumoq serve --workers N: this worker's own directory, and those of workers that no
        # longer run, which it adopts (kumoq.workers); alone, the configured one and them all.
        found = await asyncio.to_thread(_listing, data_def.path)
        spool: Spool = open_worker_spool(data_def, meta_def, self.slot, found)
        await spool.start()
        nodeid = await asyncio.to_thread(_node_id, meta_def)  # one node id for every worker
        data_def, meta_def = worker_spool_pair(data_def, meta_def, self.slot)
        writers = [LocalLogWriter(cfg) for cfg in decl.logs]
        try:
            for writer in writers:
                await asyncio.to_thread(writer.start)
        except BaseException:
            await spool.close()
            raise
        hooks = LogHooks(decl.log_hooks, self.clock)  # kumo.configure_log_hook
        records = RecordLogger(
            list(zip(writers, decl.logs, strict=True)),
            nodeid,
            self.clock,
            classifier=decl.bounce_classifier,
            hooks=hooks,
        )
        maildir = MaildirDeliverer()
        resolver: Resolver = (
            harness.resolver(decl.test_zones)
            if harness is not None
            else TestResolver.from_zone_texts(decl.test_zones)
            if decl.test_zones
            else DnsPythonResolver()
        )
        if decl.test_zones and harness is None:
            log.info("DNS answers come from the test resolver (configure_test_resolver)")
        mx = MxCache(resolver, nxdomain_bounces=True)  # issue 4: NXDOMAIN bounces
        runtime.waits.dns = mx  # kumo.dns.lookup_mx shares the delivery's MX cache
        runtime.waits.throttle = self._throttle
        hostname = decl.listeners[0].hostname if decl.listeners else None
        egress_policy = PolicyEgress(events)
        sources = SourceSelector(egress_policy, self.clock)  # shared: one cache, one WRR
        smtp = SmtpDispatch(
            policy=egress_policy, mx=mx, resolver=lambda: mx.resolver,
            clock=self.clock, hostname=hostname, sources=sources, throttle=self._throttle,
            limits=shared.limits,
            reroute=harness.reroute() if harness is not None else None,
        )  # fmt: skip
        lua = LuaDispatch(CurrentLuaConnections(events), clock=self.clock, sources=sources,
                          policy=egress_policy, throttle=self._throttle)  # fmt: skip
        maildir_dispatch: Deliverer = MaildirDispatch(maildir)
        if harness is not None:
            maildir_dispatch = RerootedMaildir(maildir_dispatch, harness)
        deliverers: dict[type, Deliverer] = {
            MaildirProtocol: maildir_dispatch,
            SmtpProtocol: smtp,
            CustomLuaProtocol: lua,
        }
        queues = QueueManager(
            configs=PolicyQueueConfigs(events),
            deliverers=deliverers,
            spool=spool,
            records=records,
            clock=self.clock,
            rules=smtp.rules,  # one set of admin rules for the scheduler and egress
            requeue=PolicyRequeue(events),
            throttle=self._throttle,
        )
        hooks.attach(HookTargets(policy=events, queues=queues, store=partial(_store, spool)))
        progress = CampaignProgress()
        records.observers.append(progress.observe)
        admin = AdminService(
            queues=queues, smtp=smtp, spool=spool, records=records, clock=self.clock,
            progress=progress, rebind_event=partial(events.call, "rebind_message"),
        )  # fmt: skip
        free_space = FreeSpaceMonitor.for_config((data_def, meta_def), decl.logs)
        receptions = [
            Reception(
                events=events,
                spool=spool,
                queues=queues,
                records=records,
                clock=self.clock,
                hostname=cfg.hostname,
                received_header=cfg.trace_headers.received_header,
                free_space=free_space,
            )
            for cfg in decl.listeners
        ]
        http_receptions = [
            Reception(events=events, spool=spool, queues=queues, records=records, clock=self.clock,
                      hostname=cfg.hostname, received_header=False, free_space=free_space)
            for cfg in decl.http_listeners
        ]  # fmt: skip
        self._live = _Live(events, decl, mx, sources, smtp, lua, queues)
        reloader: asyncio.Task[None] | None = None
        gauges = LiveGauges(  # read when /metrics is scraped; nothing on the hot path
            scheduled=queues.scheduled_counts,
            ready=smtp.ready_counts,
            connections=lambda: [
                ("esmtp_listener", sum(esmtp.connection_count for esmtp in self.listeners)),
                *smtp.connection_counts(),
            ],
            dead_letters=queues.dispositions.dead_letters.__len__,
        )
        await asyncio.to_thread(free_space.start)
        REGISTRY.register(gauges)
        try:
            for cfg, reception in zip(decl.listeners, receptions, strict=True):
                self.listeners.append(
                    await start_esmtp_listener(cfg, reception, reuse_port=self.slot is not None)
                )
            for http_cfg, reception in zip(decl.http_listeners, http_receptions, strict=True):
                services = HttpServices(reception, events, self.clock, admin=admin, slot=self.slot)
                self.http_listeners.append(
                    await start_http_listener(http_cfg, services, reuse_port=self.slot is not None)
                )
            if self.slot is not None and decl.http_listeners:  # reached by the other workers
                services = HttpServices(http_receptions[0], events, self.clock, admin=admin)
                private = await start_worker_listener(decl.http_listeners[0], services, self.slot)
                self.http_listeners += [private] if private is not None else []
            await self._enumerate(spool, queues, progress)
            for reception in (*receptions, *http_receptions):
                reception.set_ready()
            reloader = asyncio.create_task(self._reloader(), name="kumoq-reload")
            log.info("initialization complete")
            if self.slot is not None:
                await asyncio.to_thread(self.slot.mark_ready)
            await stop.wait()
            log.info("shutting down: draining sessions and deliveries")
            for http in self.http_listeners:
                http.begin_shutdown()  # liveness and injection answer 503 from now on
        finally:
            free_space.stop()
            if reloader is not None:
                reloader.cancel()
            try:
                await self._shutdown(bounds, smtp, lua, queues, (maildir, spool, writers), hooks)
            finally:
                REGISTRY.unregister(gauges)
                await shared.close()

    async def _shutdown(
        self,
        bounds: ShutdownBounds,
        smtp: SmtpDispatch,
        lua: LuaDispatch,
        queues: QueueManager,
        local: tuple[MaildirDeliverer, Spool, list[LocalLogWriter]],
        hooks: LogHooks,
    ) -> None:
        """Every wait bounded and logged, the whole within ``bounds.total`` (a watchdog ends
        the process past it). What is abandoned stays spooled for the next start."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        waiting_for = ["the SMTP listeners to drain"]
        timer = watchdog(bounds.total, waiting_for)
        try:
            log.info(
                "shutdown: bound %gs: listener drain %gs, delivery drain %gs, flush %gs",
                bounds.total, bounds.listener_drain, bounds.delivery_drain, bounds.flush,
            )  # fmt: skip
            if self.listeners or self.http_listeners:
                sessions = sum(len(listener.connections) for listener in self.listeners)
                log.info("shutdown: waiting up to %gs for %d SMTP sessions to end",
                         bounds.listener_drain, sessions)  # fmt: skip
                if self.http_listeners:  # they answer 503 "shutting down" while they drain
                    log.info("shutdown: and for %d HTTP requests",
                             sum(http.in_flight for http in self.http_listeners))  # fmt: skip
                started = loop.time()
                closing = [listener.close(bounds.listener_drain) for listener in self.listeners]
                closing += [http.drain(bounds.listener_drain) for http in self.http_listeners]
                await within(bounds.listener_drain + GRACE, asyncio.gather(*closing))
                await within(GRACE, asyncio.gather(*(h.close() for h in self.http_listeners)))
                log.info("shutdown: listeners closed in %.1fs", loop.time() - started)
            waiting_for[0] = "delivery attempts in flight"
            attempts = sum(queue.in_flight for queue in queues.queues())
            log.info("shutdown: waiting up to %gs for %d delivery attempts in flight",
                     bounds.delivery_drain, attempts)  # fmt: skip
            started, drain = loop.time(), bounds.delivery_drain
            closed = queues.close(drain + GRACE), smtp.close(drain), lua.close(drain)
            for result in await asyncio.gather(*closed, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("shutdown: closing deliveries failed: %r", result)
            log.info("shutdown: deliveries ended in %.1fs", loop.time() - started)
            if hooks:  # the records of the last deliveries, spooled for the next start
                waiting_for[0] = "the log hooks to queue their records"
                await hooks.close(bounds.flush / 2)
            waiting_for[0] = "the maildir writer, the spool and the logs to flush"
            log.info("shutdown: flushing the maildir writer, the spool and the logs")
            maildir, spool, writers = local
            # Each one closes even when one before it fails: the logs last, so that every
            # record of what the others finished is written.
            flushes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("the maildir writer", maildir.close), ("the spool", spool.close),
            ]  # fmt: skip
            flushes += [("a log writer", partial(asyncio.to_thread, w.close)) for w in writers]
            for what, close in flushes:
                try:
                    await close()
                except Exception:
                    log.exception("shutdown: closing %s failed", what)
            log.info("shutdown complete in %.1fs", loop.time() - began)
        finally:
            timer.cancel()

    async def _enumerate(
        self, spool: Spool, queues: QueueManager, progress: CampaignProgress | None = None
    ) -> None:
        """Re-queue every spooled message with its persisted attempts and due time.

        A record that cannot be read back is quarantined (docs/operations.md, "Spool
        quarantine") with one log line and a count in ``spool_quarantined``; the others start
        normally. A spool that cannot be read at all raises SpoolError."""
        count = quarantined = dead = 0
        batch: list[tuple[Message, str]] = []  # inserted a page at a time (insert_enumerated)
        resolved: dict[str, ScheduledQueue | None] = {}  # each queue resolved once
        # Every message re-queued stays alive: the cyclic GC would walk the growing heap again
        # and again for nothing (a fifth of the time for 1,000,000 messages, bench.restart).
        collecting = gc.isenabled()
        gc.disable()
        try:
            async for spool_id, meta in spool.enumerate():
                try:
                    msg, queue_name = _spooled_message(spool_id, meta)
                    block = dead_letter_block(json.loads(meta)) if DEAD_MARK in meta else None
                except Exception as exc:  # one bad record must never stop the start
                    quarantined += await _quarantine(spool, spool_id, exc)
                    continue
                if block is not None:  # a dead letter: kept, not queued
                    queues.dispositions.dead_letters.restore(msg, queue_name, block)
                    dead += 1
                    continue
                if progress is not None:
                    progress.note_enumerated(msg)
                batch.append((msg, queue_name))
                count += 1
                if len(batch) == ENUMERATION_BATCH:
                    queues.insert_enumerated(batch, resolved)
                    batch.clear()
                if count % ENUMERATION_PROGRESS_EVERY == 0:
                    log.info("spool enumeration: %d messages re-queued so far", count)
            queues.insert_enumerated(batch, resolved)
        finally:
            # What the enumeration built lives until each message is delivered: frozen out of
            # the collector's reach, it is not walked by the first collections that follow
            # (a tenth of the time for 200,000 messages) nor by every full one while it lasts.
            gc.freeze()
            if collecting:
                gc.enable()
        more = f", {quarantined} quarantined" if quarantined else ""
        more += f", {dead} dead letters kept" if dead else ""
        log.info("spool enumeration complete: %d messages re-queued%s", count, more)


def _spooled_message(spool_id: str, meta: bytes) -> tuple[Message, str]:
    """The message of one enumerated record and its queue name; SpoolRecordError names what
    is wrong with it."""
    msg, queue_name = spooled_message(spool_id, meta)
    if msg.schedule is not None:
        try:
            parse_scheduling(msg.schedule)  # what set_scheduling accepts, and only that
        except ConfigError as exc:
            raise SpoolRecordError("schedule", str(exc)) from None
    return msg, queue_name


async def _store(spool: Spool, msg: Message) -> None:
    """Store a log hook's message (kumoq.logs.hooks) as reception stores a received one."""
    await spool.store(msg.id, msg.data_parts(), json.dumps(msg.to_spool_meta()).encode())


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
