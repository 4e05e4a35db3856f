"""``kumo.make_queue_config{...}``: the scheduled queue's configuration (reference §2.2).

Every key of KumoMTA's ``QueueConfig`` is parsed and validated here, including those a later
part of kumoq acts on. ``protocol`` is one of ``SmtpProtocol``, ``MaildirProtocol``,
``CustomLuaProtocol`` (from the Lua table's single key) or ``NullProtocol`` (internal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kumoq.config.values import (
    ThrottleSpec,
    build,
    parse_bool,
    parse_duration,
    parse_enum,
    parse_int,
    parse_str,
)
from kumoq.errors import ConfigError

__all__ = [
    "CustomLuaProtocol",
    "DeliveryProtocol",
    "MaildirProtocol",
    "NullProtocol",
    "QueueConfig",
    "QueueStrategy",
    "RefreshStrategy",
    "ShrinkPolicyEntry",
    "SmtpProtocol",
]


class QueueStrategy(StrEnum):
    """The scheduled queue's timer structure."""

    TIMER_WHEEL = "TimerWheel"
    SKIP_LIST = "SkipList"
    SINGLETON_TIMER_WHEEL = "SingletonTimerWheel"
    SINGLETON_TIMER_WHEEL_V2 = "SingletonTimerWheelV2"


class RefreshStrategy(StrEnum):
    TTL = "Ttl"
    EPOCH = "Epoch"


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpProtocol:
    """Deliver by SMTP to the MX hosts of the routing domain, or to ``mx_list``."""

    mx_list: tuple[Any, ...] | None = None
    treat_mx_list_as_secure: bool = False

    @classmethod
    def from_mapping(cls, mapping: Any) -> SmtpProtocol:
        def mx_list(key: str, value: Any) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}: expected a list of hosts, got {value!r}")
            for entry in value:
                if isinstance(entry, dict):
                    unknown = set(entry) - {"name", "addr"}
                    if unknown or "addr" not in entry:
                        raise ConfigError(
                            f"{key}: invalid entry {entry!r}: expected {{name=..., addr=...}}"
                        )
                elif not isinstance(entry, str):
                    raise ConfigError(f"{key}: invalid entry {entry!r}")
            return tuple(value)

        return build(
            cls,
            "protocol.smtp",
            mapping,
            {"mx_list": mx_list, "treat_mx_list_as_secure": parse_bool},
        )


def _file_mode(key: str, value: Any) -> int:
    mode = parse_int(key, value, minimum=0)
    if mode > 0o7777:
        raise ConfigError(f"{key}: invalid mode {value!r}: expected at most 0o7777")
    return mode


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildirProtocol:
    """Deliver into a maildir; ``maildir_path`` is a template expanded per recipient (§1.9)."""

    maildir_path: str
    dir_mode: int | None = None
    file_mode: int | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> MaildirProtocol:
        return build(
            cls,
            "protocol",
            mapping,
            {"maildir_path": parse_str, "dir_mode": _file_mode, "file_mode": _file_mode},
            required=("maildir_path",),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomLuaProtocol:
    """Deliver by calling the policy's connection constructor event."""

    constructor: str
    batch_size: int = 1
    min_batch_size: int = 1
    max_batch_latency: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size!r}")
        if not 1 <= self.min_batch_size <= self.batch_size:
            raise ConfigError(
                f"min_batch_size: must be between 1 and batch_size ({self.batch_size}), "
                f"got {self.min_batch_size!r}"
            )

    @classmethod
    def from_mapping(cls, mapping: Any) -> CustomLuaProtocol:
        return build(
            cls,
            "protocol.custom_lua",
            mapping,
            {
                "constructor": parse_str,
                "batch_size": lambda k, v: parse_int(k, v, minimum=1),
                "min_batch_size": lambda k, v: parse_int(k, v, minimum=1),
                "max_batch_latency": parse_duration,
            },
            required=("constructor",),
        )


@dataclass(frozen=True, slots=True)
class NullProtocol:
    """The internal ``null`` queue: messages are discarded."""


DeliveryProtocol = SmtpProtocol | MaildirProtocol | CustomLuaProtocol | NullProtocol


def _protocol(key: str, value: Any) -> DeliveryProtocol:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key}: expected a table such as {{smtp={{}}}}, got {value!r}")
    if "maildir_path" in value:
        return MaildirProtocol.from_mapping(value)
    if len(value) != 1:
        raise ConfigError(
            f"{key}: expected exactly one of smtp, maildir_path, custom_lua; got {sorted(value)}"
        )
    ((kind, params),) = value.items()
    if kind == "smtp":
        return SmtpProtocol.from_mapping(params or {})
    if kind == "custom_lua":
        return CustomLuaProtocol.from_mapping(params)
    raise ConfigError(
        f"{key}: unknown protocol {kind!r}; allowed are: smtp, maildir_path, custom_lua"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ShrinkPolicyEntry:
    interval: float
    policy: str

    @classmethod
    def from_mapping(cls, mapping: Any) -> ShrinkPolicyEntry:
        def policy(key: str, value: Any) -> str:
            if value not in ("ShrinkDataAndMeta", "ShrinkData", "NoShrink"):
                raise ConfigError(
                    f"{key}: invalid value {value!r}; expected one of "
                    "'ShrinkDataAndMeta', 'ShrinkData', 'NoShrink'"
                )
            return str(value)

        return build(
            cls,
            "shrink_policy",
            mapping,
            {"interval": parse_duration, "policy": policy},
            required=("interval", "policy"),
        )


def _shrink_policy(key: str, value: Any) -> tuple[ShrinkPolicyEntry, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of {{interval=, policy=}}, got {value!r}")
    return tuple(ShrinkPolicyEntry.from_mapping(v) for v in value)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """How one scheduled queue retries, expires, throttles and delivers its messages."""

    retry_interval: float = 20 * 60.0
    max_retry_interval: float | None = None
    max_age: float = 7 * 86400.0
    egress_pool: str | None = None
    max_message_rate: ThrottleSpec | None = None
    protocol: DeliveryProtocol = field(default_factory=SmtpProtocol)
    strategy: QueueStrategy = QueueStrategy.SINGLETON_TIMER_WHEEL
    timerwheel_tick_interval: float | None = None
    reap_interval: float = 600.0
    refresh_interval: float = 60.0
    refresh_strategy: RefreshStrategy = RefreshStrategy.TTL
    provider_name: str | None = None
    shrink_policy: tuple[ShrinkPolicyEntry, ...] = ()
    #: a kumoq extension: keep a message that bounces or expires as a dead letter this long
    #: (``None``: removed at once, as KumoMTA does)
    dead_letter_retention: float | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> QueueConfig:
        return build(
            cls,
            "make_queue_config",
            mapping,
            {
                "retry_interval": parse_duration,
                "max_retry_interval": parse_duration,
                "max_age": parse_duration,
                "egress_pool": parse_str,
                "max_message_rate": ThrottleSpec.parse,
                "protocol": _protocol,
                "strategy": parse_enum(QueueStrategy),
                "timerwheel_tick_interval": parse_duration,
                "reap_interval": parse_duration,
                "refresh_interval": parse_duration,
                "refresh_strategy": parse_enum(RefreshStrategy),
                "provider_name": parse_str,
                "shrink_policy": _shrink_policy,
                "dead_letter_retention": parse_duration,
            },
        )

    def tick_interval(self) -> float:
        """The TimerWheel tick: the configured one, or ``clamp(retry_interval / 20, 1s, 1m)``."""
        if self.timerwheel_tick_interval is not None:
            return self.timerwheel_tick_interval
        return min(max(self.retry_interval / 20, 1.0), 60.0)
