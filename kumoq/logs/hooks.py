"""Log hooks: ``kumo.configure_log_hook{name=...}`` turns log records into queued messages.

As in KumoMTA (``crates/kumod/src/logging/hooks.rs``), every record the ``RecordLogger`` logs
about a message is offered to each configured hook (``per_record`` may turn record types off).
The hook builds the record's JSON line with its own ``meta`` and ``headers`` selection and
makes a new message of it:

- sender and recipients: the record's ``sender`` and ``recipient``;
- meta: the record's ``meta`` (what the hook's ``meta`` selected), plus ``log_record`` (the
  record as a table) and ``reception_protocol = "LogRecord"``;
- data: the JSON line (ending in a newline).

The policy's ``should_enqueue_log_record(msg, hook_name)`` decides; when it returns true the
message is queued by its queue name (the handler sets ``msg:set_meta('queue', ...)``): it is
stored in the spool, then inserted into its scheduled queue, and from there it is delivered
like any message, usually through ``protocol = {custom_lua = {...}}`` (a webhook), with the
queue's retries and backoff. No ``Reception`` record is written for it.

A record about a hook's own message (its ``reception_protocol`` is ``LogRecord``) is never
offered, so the hook cannot feed itself. Offering never blocks the logger: the policy calls,
spool writes and inserts run in at most ``min(back_pressure, 32)`` tasks per hook; records
beyond that wait in order in a backlog. A record whose message cannot be built or queued is
logged as an error and dropped, as KumoMTA does; so are the ones still waiting at the end of
the shutdown drain (``close``).

L1: imports asyncio, kumoq.clock, kumoq.config.logs, kumoq.logs.records, kumoq.message and
kumoq.errors; the policy, the spool and the queue manager come in through ``HookTargets``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from kumoq.clock import Clock
from kumoq.config.logs import LogHookConfig
from kumoq.errors import KumoqError
from kumoq.logs.records import FieldSelection, RecordType
from kumoq.message import NULL_QUEUE, EnvelopeAddress, Message, new_spool_id

__all__ = ["LOG_RECORD_PROTOCOL", "HookTargets", "LogHook", "LogHooks", "hook_message"]

log = logging.getLogger("kumoq.logs.hooks")

LOG_RECORD_PROTOCOL: Final = "LogRecord"
"""The ``reception_protocol`` of a message made by a log hook."""
MAX_CONCURRENT: Final = 32
"""Records of one hook in flight at once (policy call, spool write, insert) at most."""


class HookPolicy(Protocol):
    """The ``should_enqueue_log_record`` event (kumoq.lua.events.PolicyEvents has it)."""

    async def should_enqueue_log_record(self, msg: Message, hook_name: str) -> bool: ...


class HookQueues(Protocol):
    """What queuing a hook's message needs of the queue manager."""

    async def resolve_waiting(self, name: str) -> object: ...

    def insert(self, msg: Message) -> None: ...


@dataclass(frozen=True, slots=True)
class HookTargets:
    """Where a hook's messages go: the policy decides, ``store`` spools, ``queues`` queue."""

    policy: HookPolicy
    queues: HookQueues
    store: Callable[[Message], Awaitable[None]]


@final
class LogHook:
    """One ``configure_log_hook``: its config and compiled field selection."""

    __slots__ = ("config", "name", "selection")

    def __init__(self, config: LogHookConfig) -> None:
        self.config = config
        self.name = config.name
        self.selection = FieldSelection(meta=config.meta, headers=config.headers)

    def wants(self, kind: RecordType) -> bool:
        return not self.config.per_record or self.config.record_enabled(kind.value)


def hook_message(line: bytes, now: float) -> Message:
    """The message a hook makes of one record's JSON ``line``. Raises KumoqError (an address
    that does not parse) or ValueError (a line that is not a JSON object)."""
    record: Any = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a log record must be a JSON object")
    rcpt = record.get("recipient")
    rcpts: Sequence[Any] = [rcpt] if isinstance(rcpt, str) else rcpt or []
    recipients = [EnvelopeAddress.parse(str(r)) for r in rcpts if r]
    if not recipients:
        raise ValueError("the record has no recipient")
    meta = dict(record.get("meta") or {})
    meta["log_record"] = record
    meta["reception_protocol"] = LOG_RECORD_PROTOCOL
    data = line if line.endswith(b"\n") else line + b"\n"
    return Message(
        id=new_spool_id(now),
        sender=EnvelopeAddress.parse(str(record.get("sender") or "")),
        recipients=recipients,
        meta=meta,
        data=data,
    )


@final
class LogHooks:
    """Every configured hook, fed by ``RecordLogger.log`` through ``offer``.

    Records offered before ``attach`` (the daemon wires the targets once the queue manager
    exists) wait in the backlog."""

    def __init__(self, configs: Sequence[LogHookConfig], clock: Clock) -> None:
        self.hooks = [LogHook(c) for c in configs]
        self._clock = clock
        self._targets: HookTargets | None = None
        self._backlog: dict[str, deque[Message]] = {h.name: deque() for h in self.hooks}
        self._limits = {h.name: min(h.config.back_pressure, MAX_CONCURRENT) for h in self.hooks}
        self._workers: dict[str, set[asyncio.Task[None]]] = {h.name: set() for h in self.hooks}
        self._closing = False
        #: records dropped because their message could not be built or queued
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def attach(self, targets: HookTargets) -> None:
        self._targets = targets
        for name in self._backlog:
            self._start_workers(name)

    @property
    def pending(self) -> int:
        """Records offered and not yet queued (or dropped)."""
        return sum(len(b) for b in self._backlog.values()) + sum(
            len(w) for w in self._workers.values()
        )

    def offer(self, hook: LogHook, line: bytes) -> None:
        """Make the message of one record (``line``, built with ``hook.selection``) and hand
        it to the hook's workers. Never blocks nor raises."""
        if self._closing:
            self.dropped += 1
            log.error("log hook %s: shutting down; a record was not queued", hook.name)
            return
        try:
            msg = hook_message(line, self._clock.now())
        except (KumoqError, ValueError) as exc:
            self.dropped += 1
            log.error("log hook %s: cannot make a message of a record: %s", hook.name, exc)
            return
        self._backlog[hook.name].append(msg)
        if self._targets is not None:
            self._start_workers(hook.name)

    def _start_workers(self, name: str) -> None:
        workers, backlog = self._workers[name], self._backlog[name]
        while backlog and len(workers) < self._limits[name]:
            task = asyncio.ensure_future(self._work(name, backlog.popleft()))
            workers.add(task)
            task.add_done_callback(workers.discard)

    async def _work(self, name: str, msg: Message) -> None:
        backlog = self._backlog[name]
        while True:
            try:
                await self._enqueue(name, msg)
            except asyncio.CancelledError:
                raise
            except KumoqError as exc:
                self.dropped += 1
                log.error("log hook %s: message %s not queued: %s", name, msg.id, exc)
            except Exception:
                self.dropped += 1
                log.exception("log hook %s: message %s not queued", name, msg.id)
            if not backlog:
                return
            msg = backlog.popleft()

    async def _enqueue(self, name: str, msg: Message) -> None:
        targets = self._targets
        assert targets is not None  # workers start only once attached
        if not await targets.policy.should_enqueue_log_record(msg, name):
            return
        queue = msg.queue_name()
        if queue == NULL_QUEUE:
            return
        await targets.queues.resolve_waiting(queue)
        await targets.store(msg)
        targets.queues.insert(msg)

    async def close(self, seconds: float) -> None:
        """Stop taking records; wait up to ``seconds`` for the ones offered to be queued,
        then cancel the rest (logged: they are not in the spool)."""
        self._closing = True
        workers = [t for tasks in self._workers.values() for t in tasks]
        late: set[asyncio.Task[None]] = set()
        if workers:
            _, late = await asyncio.wait(workers, timeout=seconds)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        left = sum(len(b) for b in self._backlog.values()) + len(late)
        if left:
            self.dropped += left
            log.error("log hooks: %d records were not queued before shutdown", left)
        for backlog in self._backlog.values():
            backlog.clear()
