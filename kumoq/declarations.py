"""What the policy declares, and the policy seen through the seams the daemon wires.

- ``load_policy`` loads the policy file and runs its ``init``, collecting ``Declarations``
  (listeners, spools, logs, the test resolver) made by ``BUILDERS``. For the daemon (start and
  reload) it then fires ``validate_config``: an error there, or a call of
  ``kumo.validation_failed()``, fails the load with the policy's file and line. It logs a
  warning for each handler kumoq never calls (kumoq.lua.events.unfired_handlers).
- ``PolicyEgress``, ``PolicyQueueConfigs`` and ``PolicyRequeue`` answer the egress and
  scheduler seams through the policy's events (reference §2.1, §2.4, §1.6).
- ``PolicyEvents.swap`` (kumoq.lua.events) lets a reload replace the policy under all of them.

L3: imports the Lua bridge and the config tables; imported by the daemon and the CLI.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.http import HttpListenerConfig
from kumoq.config.listener import EsmtpListenerConfig
from kumoq.config.listener_domain import ListenerDomain
from kumoq.config.logs import LocalLogsConfig, LogHookConfig
from kumoq.config.queue import QueueConfig
from kumoq.config.redis import RedisThrottleConfig
from kumoq.config.spool import SpoolDefinition, check_spool_pair
from kumoq.dns.resolver import TestResolver
from kumoq.errors import ConfigError, PolicyError
from kumoq.logs.classify import BounceClassifier, ClassifierParams, build_classifier
from kumoq.lua.events import PolicyEvents, unfired_handlers
from kumoq.lua.runtime import PolicyRuntime
from kumoq.message import Message, QueueNameParts

__all__ = [
    "BUILDERS",
    "CurrentLuaConnections",
    "Declarations",
    "PolicyEgress",
    "PolicyQueueConfigs",
    "PolicyRequeue",
    "load_policy",
]

log = logging.getLogger("kumoq.policy")


@dataclass(slots=True)
class Declarations:
    """What the policy's ``init`` asked for."""

    listeners: list[EsmtpListenerConfig] = field(default_factory=list)
    spools: dict[str, SpoolDefinition] = field(default_factory=dict)
    logs: list[LocalLogsConfig] = field(default_factory=list)
    #: ``kumo.configure_log_hook`` calls, in order (names are unique)
    log_hooks: list[LogHookConfig] = field(default_factory=list)
    http_listeners: list[HttpListenerConfig] = field(default_factory=list)
    test_zones: list[str] = field(default_factory=list)
    #: ``kumo.configure_bounce_classifier``'s compiled rules (the first call; a second fails)
    bounce_classifier: BounceClassifier | None = None
    #: ``kumo.configure_redis_throttles`` (once): throttles and limits shared through redis
    redis_throttles: RedisThrottleConfig | None = None
    #: called by ``kumo.bump_config_epoch()`` (the daemon reloads the policy)
    on_bump_config_epoch: Callable[[], None] | None = None
    #: where ``kumo.validation_failed()`` was called (``file:line``, or ``?``), in call order
    validation_failures: list[str] = field(default_factory=list)

    def declare(self, kind: str, value: object) -> None:
        if kind == "bump_config_epoch":
            if self.on_bump_config_epoch is not None:
                self.on_bump_config_epoch()
        elif kind == "validation_failed":
            self.validation_failures.append(value if isinstance(value, str) else "?")
        elif isinstance(value, EsmtpListenerConfig):
            self.listeners.append(value)
        elif isinstance(value, SpoolDefinition):
            if value.name in self.spools:
                raise ConfigError(f"define_spool: spool {value.name!r} is already defined")
            self.spools[value.name] = value
        elif isinstance(value, LocalLogsConfig):
            self.logs.append(value)
        elif isinstance(value, LogHookConfig):
            if any(hook.name == value.name for hook in self.log_hooks):
                raise ConfigError(f"configure_log_hook: a hook named {value.name!r} already exists")
            self.log_hooks.append(value)
        elif isinstance(value, HttpListenerConfig):
            self.http_listeners.append(value)
        elif isinstance(value, _TestZones):
            self.test_zones.extend(value.texts)
        elif isinstance(value, BounceClassifier):
            if self.bounce_classifier is not None:
                raise ConfigError("configure_bounce_classifier: classifier already initialized")
            self.bounce_classifier = value
        elif isinstance(value, RedisThrottleConfig):
            if self.redis_throttles is not None:
                raise ConfigError(
                    "configure_redis_throttles: redis already configured for throttles"
                )
            self.redis_throttles = value

    def restart_only_changes(self, new: Declarations) -> list[str]:
        """What ``new`` (a reloaded policy's ``init``) changes that only a restart applies."""
        pairs = {
            "ESMTP listeners": (self.listeners, new.listeners),
            "spools": (self.spools, new.spools),
            "local logs": (self.logs, new.logs),
            "log hooks": (self.log_hooks, new.log_hooks),
            "HTTP listeners": (self.http_listeners, new.http_listeners),
            "the test resolver": (self.test_zones, new.test_zones),
            "the bounce classifier": (
                _params(self.bounce_classifier),
                _params(new.bounce_classifier),
            ),
            "the redis throttles": (self.redis_throttles, new.redis_throttles),
        }
        return [what for what, (old, now) in pairs.items() if old != now]

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


def _params(classifier: BounceClassifier | None) -> object:
    """What a reload compares: the call's parameters and the rules files' texts."""
    return None if classifier is None else (classifier.params, classifier.sources)


def _bounce_classifier(mapping: Any) -> BounceClassifier:
    """``kumo.configure_bounce_classifier``: the rules files read and compiled now, so a bad
    file or regex fails ``init`` at the calling line, naming the file and the rule."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"configure_bounce_classifier: expected a table, got {mapping!r}")
    params = ClassifierParams.from_mapping(mapping)
    return build_classifier(params, read=lambda name: Path(name).read_text(encoding="utf-8"))


BUILDERS = {
    "configure_bounce_classifier": _bounce_classifier,
    "configure_test_resolver": _test_resolver,
    "start_esmtp_listener": EsmtpListenerConfig.from_mapping,
    "define_spool": SpoolDefinition.from_mapping,
    "configure_local_logs": LocalLogsConfig.from_mapping,
    "configure_log_hook": LogHookConfig.from_mapping,
    "configure_redis_throttles": RedisThrottleConfig.from_mapping,
    "make_queue_config": QueueConfig.from_mapping,
    "make_egress_pool": EgressPool.from_mapping,
    "make_egress_source": EgressSource.from_mapping,
    "make_egress_path": EgressPathConfig.from_mapping,
    "start_http_listener": HttpListenerConfig.from_mapping,
    "make_listener_domain": ListenerDomain.from_mapping,
}


def load_policy(
    path: Path, *, serving: bool = False
) -> tuple[PolicyRuntime, PolicyEvents, Declarations]:
    """Load the policy file and run its ``init``; raises PolicyError naming file and line.

    ``serving`` (the daemon's start and reload): then fire ``validate_config`` too, and log
    the handlers kumoq never calls. ``kumoq validate`` does both itself, into its report."""
    declarations = Declarations()
    runtime = PolicyRuntime(path, builders=BUILDERS, declare=declarations.declare)
    runtime.fire_init()
    declarations.spool_pair()
    events = PolicyEvents(runtime)
    if serving:
        for site, text in [*unfired_handlers(runtime.handler_names), *runtime.unknown_fields]:
            log.warning("%s: %s", site, text)
        events.validate_config()
        if declarations.validation_failures:
            where = declarations.validation_failures[0]
            raise PolicyError(
                f"{where}: validate_config: the policy called kumo.validation_failed() to "
                "report a failure (what it printed says why)",
                location=where,
            )
    return runtime, events, declarations


class PolicyEgress:
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


class PolicyQueueConfigs:
    def __init__(self, events: PolicyEvents) -> None:
        self._events = events

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig | None:
        return self._events.get_queue_config(
            parts.domain, parts.tenant, parts.campaign, parts.routing_domain
        )


class PolicyRequeue:
    """``RequeuePolicy`` (kumoq.scheduler.requeue) through the current policy's
    ``requeue_message`` event."""

    def __init__(self, events: PolicyEvents) -> None:
        self._events = events

    def has_handler(self) -> bool:
        return self._events.has_handler("requeue_message")

    def requeue_message(
        self,
        msg: Message,
        response: str,
        context: Sequence[str],
        increment_attempts: bool,
        delay: float | None,
    ) -> None:
        self._events.requeue_message(msg, response, context, increment_attempts, delay)


class CurrentLuaConnections:
    """Custom Lua delivery (``LuaConnections``) through the current policy: a new connection is
    made by the runtime in place then, and keeps using it after a reload, until it closes."""

    def __init__(self, events: PolicyEvents) -> None:
        self._events = events
        self._conns: dict[int, tuple[PolicyRuntime, int]] = {}
        self._ids = itertools.count(1)

    async def construct(self, name: str, *args: str | None) -> int:
        runtime = self._events.runtime
        inner = await runtime.construct(name, *args)
        conn = next(self._ids)
        self._conns[conn] = (runtime, inner)
        return conn

    async def conn_send(self, conn: int, msg: Message) -> Any:
        runtime, inner = self._conns[conn]
        return await runtime.conn_send(inner, msg)

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        runtime, inner = self._conns[conn]
        return await runtime.conn_send_batch(inner, msgs)

    def conn_close(self, conn: int) -> None:
        entry = self._conns.pop(conn, None)
        if entry is not None:
            runtime, inner = entry
            runtime.conn_close(inner)
