"""Egress configuration: ``make_egress_pool``, ``make_egress_source``, ``make_egress_path``.

Reference §2.3 (egress path keys and defaults), §2.4 (pools and sources), §10 (``idle_timeout``
is 5 s, the code's default, not the documented 60 s). Every key KumoMTA accepts is parsed,
validated and stored here, including the NEXT/LATER ones that kumoq does not act on yet.

The built-in pool and source ``unspecified`` (§1.7) are ``UNSPECIFIED_POOL`` and
``UNSPECIFIED_SOURCE``.

An empty Lua table ``{}`` reaches a list key as an empty list or an empty mapping (the Lua
bridge's ``EmptyTable`` is both); both are accepted for list and map keys.

Pure (L0): imports only kumoq.errors and kumoq.config; no IO, no asyncio, no lupa.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from kumoq.config.queue import RefreshStrategy
from kumoq.config.values import (
    Cidr,
    LimitSpec,
    ThrottleSpec,
    build,
    parse_bool,
    parse_cidr_list,
    parse_duration,
    parse_enum,
    parse_hostname,
    parse_int,
    parse_str,
    parse_str_list,
)
from kumoq.errors import ConfigError

__all__ = [
    "DEFAULT_PROHIBITED_HOSTS",
    "UNSPECIFIED",
    "UNSPECIFIED_POOL",
    "UNSPECIFIED_SOURCE",
    "EgressPathConfig",
    "EgressPool",
    "EgressPoolEntry",
    "EgressSource",
    "IpLookupStrategy",
    "KeySource",
    "MemoryReductionPolicy",
    "ReconnectStrategy",
    "SuspendWhen",
    "Tls",
    "WakeupStrategy",
]

UNSPECIFIED: Final = "unspecified"

KeySource = str | Mapping[str, str]
"""A secret: a file path (string) or ``{key_data=...}`` / ``{vault_*=...}``."""

_KEY_SOURCE_KEYS: Final = frozenset(
    {"key_data", "vault_address", "vault_token", "vault_mount", "vault_path", "vault_key"}
)


class Tls(StrEnum):
    """``enable_tls``: how STARTTLS is used towards the destination."""

    OPPORTUNISTIC = "Opportunistic"
    OPPORTUNISTIC_INSECURE = "OpportunisticInsecure"
    REQUIRED = "Required"
    REQUIRED_INSECURE = "RequiredInsecure"
    DISABLED = "Disabled"


class ReconnectStrategy(StrEnum):
    CONNECT_NEXT_HOST = "ConnectNextHost"
    TERMINATE_SESSION = "TerminateSession"
    RECONNECT_SAME_HOST = "ReconnectSameHost"


class IpLookupStrategy(StrEnum):
    IPV4_ONLY = "Ipv4Only"
    IPV6_ONLY = "Ipv6Only"
    IPV4_AND_IPV6 = "Ipv4AndIpv6"
    IPV6_AND_IPV4 = "Ipv6AndIpv4"
    IPV4_THEN_IPV6 = "Ipv4thenIpv6"
    IPV6_THEN_IPV4 = "Ipv6thenIpv4"


class WakeupStrategy(StrEnum):
    AGGRESSIVE = "Aggressive"
    RELAXED = "Relaxed"


class MemoryReductionPolicy(StrEnum):
    SHRINK_DATA_AND_META = "ShrinkDataAndMeta"
    SHRINK_DATA = "ShrinkData"
    NO_SHRINK = "NoShrink"


def _is_empty_table(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 0


def _cidrs(key: str, value: Any) -> tuple[Cidr, ...]:
    return () if _is_empty_table(value) else parse_cidr_list(key, value)


def _strs(key: str, value: Any) -> tuple[str, ...]:
    return () if _is_empty_table(value) else parse_str_list(key, value)


def _ip(key: str, value: Any) -> str:
    """An IP address, normalised (``"::0001"`` becomes ``"::1"``)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an IP address, got {value!r}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(f"{key}: invalid IP address {value!r}") from None


def _port(key: str, value: Any) -> int:
    port = parse_int(key, value, minimum=1)
    if port > 65535:
        raise ConfigError(f"{key}: invalid port {value!r}: expected 1..65535")
    return port


def _count(key: str, value: Any) -> int:
    return parse_int(key, value, minimum=1)


def _key_source(key: str, value: Any) -> KeySource:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and value:
        unknown = sorted(str(k) for k in value if k not in _KEY_SOURCE_KEYS)
        if unknown:
            raise ConfigError(
                f"{key}: unknown key {unknown[0]!r} in {value!r}; "
                f"allowed keys are: {', '.join(sorted(_KEY_SOURCE_KEYS))}"
            )
        if not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key}: expected string values in {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: expected a path or {{key_data=...}}, got {value!r}")


def _map_of(parser: Any) -> Any:
    """A map of name to a value parsed by ``parser`` (``additional_*`` keys)."""

    def parse(key: str, value: Any) -> Mapping[str, Any]:
        if isinstance(value, list | tuple) and not value:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table of name = value, got {value!r}")
        out: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{key}: expected string names, got {name!r}")
            out[name] = parser(f"{key}.{name}", item)
        return out

    return parse


@dataclass(frozen=True, slots=True)
class EgressPoolEntry:
    """One source of a pool; weight 0 excludes it from selection."""

    name: str
    weight: int = 1

    @classmethod
    def from_mapping(cls, mapping: Any) -> EgressPoolEntry:
        return build(
            cls,
            "make_egress_pool.entries",
            mapping,
            {"name": parse_str, "weight": lambda k, v: parse_int(k, v, minimum=0)},
            required=("name",),
        )


def _pool_entries(key: str, value: Any) -> tuple[EgressPoolEntry, ...]:
    if _is_empty_table(value):
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of {{name=, weight=}}, got {value!r}")
    return tuple(EgressPoolEntry.from_mapping(v) for v in value)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPool:
    """``kumo.make_egress_pool``: named, weighted sources. No entries: always transfails."""

    name: str
    entries: tuple[EgressPoolEntry, ...] = ()
    ttl: float = 60.0

    @classmethod
    def from_mapping(cls, mapping: Any) -> EgressPool:
        return build(
            cls,
            "make_egress_pool",
            mapping,
            {"name": parse_str, "entries": _pool_entries, "ttl": parse_duration},
            required=("name",),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendWhen:
    """``suspend_when_unplumbed`` / ``suspend_when_proxy_unhealthy`` (LATER).

    ``trigger`` is ``"Immediate"`` (the default) or, as KumoMTA writes it,
    ``{ Threshold = "N/period" }`` (a bare ``"N/period"`` is accepted too): N failures within
    the rolling period. ``duration`` is required, as in KumoMTA.
    """

    trigger: str | ThrottleSpec = "Immediate"
    duration: float | None = None

    @classmethod
    def from_mapping(cls, mapping: Any, table: str = "suspend_when") -> SuspendWhen:
        def trigger(key: str, value: Any) -> str | ThrottleSpec:
            if value == "Immediate":
                return "Immediate"
            if isinstance(value, Mapping):
                if list(value) != ["Threshold"]:
                    raise ConfigError(
                        f"{table}.{key}: expected 'Immediate' or {{ Threshold = 'N/period' }}, "
                        f"got {dict(value)!r}"
                    )
                return ThrottleSpec.parse(f"{table}.{key}.Threshold", value["Threshold"])
            return ThrottleSpec.parse(key, value)

        parsers = {"trigger": trigger, "duration": parse_duration}
        return build(cls, table, mapping, parsers, required=("duration",))


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressSource:
    """``kumo.make_egress_source``: a local bind address and its SMTP identity.

    ``source_address`` is a normalised IP string (``None``: the OS chooses).
    """

    name: str
    source_address: str | None = None
    ehlo_domain: str | None = None
    remote_port: int | None = None
    ttl: float = 60.0
    ha_proxy_server: str | None = None
    ha_proxy_source_address: str | None = None
    socks5_proxy_server: str | None = None
    socks5_proxy_source_address: str | None = None
    socks5_proxy_username: str | None = None
    socks5_proxy_password: KeySource | None = None
    suspend_when_unplumbed: SuspendWhen | None = None
    suspend_when_proxy_unhealthy: SuspendWhen | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> EgressSource:
        return build(
            cls,
            "make_egress_source",
            mapping,
            {
                "name": parse_str,
                "source_address": _ip,
                "ehlo_domain": parse_hostname,
                "remote_port": _port,
                "ttl": parse_duration,
                "ha_proxy_server": parse_str,
                "ha_proxy_source_address": _ip,
                "socks5_proxy_server": parse_str,
                "socks5_proxy_source_address": _ip,
                "socks5_proxy_username": parse_str,
                "socks5_proxy_password": _key_source,
                "suspend_when_unplumbed": lambda k, v: SuspendWhen.from_mapping(v, k),
                "suspend_when_proxy_unhealthy": lambda k, v: SuspendWhen.from_mapping(v, k),
            },
            required=("name",),
        )


UNSPECIFIED_SOURCE: Final = EgressSource(name=UNSPECIFIED)
UNSPECIFIED_POOL: Final = EgressPool(name=UNSPECIFIED, entries=(EgressPoolEntry(UNSPECIFIED, 1),))

_DEFAULT_CONNECTION_LIMIT: Final = LimitSpec(32)
DEFAULT_PROHIBITED_HOSTS: Final[tuple[Cidr, ...]] = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128")
)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPathConfig:
    """``kumo.make_egress_path``: how one ready queue (source, site) connects and delivers.

    Defaults follow the Rust code (§2.3, §10): ``idle_timeout`` is 5 s. Timeouts are seconds.
    """

    # CORE
    connection_limit: LimitSpec = _DEFAULT_CONNECTION_LIMIT
    max_connection_rate: ThrottleSpec | None = None
    max_message_rate: ThrottleSpec | None = None
    max_deliveries_per_connection: int = 1024
    max_ready: int = 1024
    consecutive_connection_failures_before_delay: int = 100
    enable_tls: Tls = Tls.OPPORTUNISTIC
    smtp_port: int = 25
    ehlo_domain: str | None = None
    prohibited_hosts: tuple[Cidr, ...] = DEFAULT_PROHIBITED_HOSTS
    skip_hosts: tuple[Cidr, ...] = ()
    connect_timeout: float = 60.0
    banner_timeout: float = 60.0
    auth_timeout: float = 60.0
    ehlo_timeout: float = 300.0
    mail_from_timeout: float = 300.0
    rcpt_to_timeout: float = 300.0
    data_timeout: float = 300.0
    data_dot_timeout: float = 300.0
    rset_timeout: float = 5.0
    starttls_timeout: float = 5.0
    idle_timeout: float = 5.0
    # NEXT
    additional_connection_limits: Mapping[str, LimitSpec] = field(default_factory=dict)
    additional_message_rate_throttles: Mapping[str, ThrottleSpec] = field(default_factory=dict)
    source_selection_rate: ThrottleSpec | None = None
    max_recipients_per_batch: int = 100
    ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6
    reconnect_strategy: ReconnectStrategy = ReconnectStrategy.CONNECT_NEXT_HOST
    try_next_host_on_transport_error: bool = False
    refresh_interval: float = 60.0
    refresh_strategy: RefreshStrategy = RefreshStrategy.TTL
    enable_pipelining: bool = True
    enable_rset: bool = True
    smtp_auth_plain_username: str | None = None
    smtp_auth_plain_password: KeySource | None = None
    allow_smtp_auth_plain_without_tls: bool = False
    allow_smtp_auth_plain_without_valid_certificate: bool = False
    # LATER
    additional_source_selection_rates: Mapping[str, ThrottleSpec] = field(default_factory=dict)
    system_shutdown_timeout: float | None = None
    enable_mta_sts: bool = True
    enable_dane: bool = False
    tls_prefer_openssl: bool = False
    tls_certificate: KeySource | None = None
    tls_private_key: KeySource | None = None
    openssl_cipher_list: str | None = None
    openssl_cipher_suites: str | None = None
    openssl_options: str | None = None
    rustls_cipher_suites: tuple[str, ...] = ()
    remember_broken_tls: float | None = None
    opportunistic_tls_reconnect_on_failed_handshake: bool = False
    use_lmtp: bool = False
    ignore_8bit_checks: bool = False
    provider_name: str | None = None
    readyq_pool_name: str | None = None
    dispatcher_wakeup_strategy: WakeupStrategy = WakeupStrategy.AGGRESSIVE
    maintainer_wakeup_strategy: WakeupStrategy = WakeupStrategy.AGGRESSIVE
    low_memory_reduction_policy: MemoryReductionPolicy = MemoryReductionPolicy.SHRINK_DATA_AND_META
    no_memory_reduction_policy: MemoryReductionPolicy = MemoryReductionPolicy.SHRINK_DATA_AND_META
    dispatcher_progress_watchdog_timeout: float | None = None
    aggressive_connection_opening: bool = False

    @classmethod
    def from_mapping(cls, mapping: Any) -> EgressPathConfig:
        return build(cls, "make_egress_path", mapping, _PATH_PARSERS)

    def lease_duration(self) -> float:
        """The connection-limit lease (§1.8): the sum of the send timeouts, 1690 s by default
        (KumoMTA's ``total_connection_lifetime_duration``: ``idle_timeout``, not ``rset``)."""
        return (
            self.connect_timeout
            + self.banner_timeout
            + self.auth_timeout
            + self.ehlo_timeout
            + self.mail_from_timeout
            + self.rcpt_to_timeout
            + self.data_timeout
            + self.data_dot_timeout
            + self.starttls_timeout
            + self.idle_timeout
        )


_PATH_PARSERS: Final[dict[str, Any]] = {
    "connection_limit": LimitSpec.parse,
    "max_connection_rate": ThrottleSpec.parse,
    "max_message_rate": ThrottleSpec.parse,
    "max_deliveries_per_connection": _count,
    "max_ready": _count,
    "consecutive_connection_failures_before_delay": lambda k, v: parse_int(k, v, minimum=0),
    "enable_tls": parse_enum(Tls),
    "smtp_port": _port,
    "ehlo_domain": parse_hostname,
    "prohibited_hosts": _cidrs,
    "skip_hosts": _cidrs,
    **dict.fromkeys(
        (
            "connect_timeout",
            "banner_timeout",
            "auth_timeout",
            "ehlo_timeout",
            "mail_from_timeout",
            "rcpt_to_timeout",
            "data_timeout",
            "data_dot_timeout",
            "rset_timeout",
            "starttls_timeout",
            "idle_timeout",
            "refresh_interval",
            "system_shutdown_timeout",
            "remember_broken_tls",
            "dispatcher_progress_watchdog_timeout",
        ),
        parse_duration,
    ),
    "additional_connection_limits": _map_of(LimitSpec.parse),
    "additional_message_rate_throttles": _map_of(ThrottleSpec.parse),
    "additional_source_selection_rates": _map_of(ThrottleSpec.parse),
    "source_selection_rate": ThrottleSpec.parse,
    "max_recipients_per_batch": _count,
    "ip_lookup_strategy": parse_enum(IpLookupStrategy),
    "reconnect_strategy": parse_enum(ReconnectStrategy),
    "refresh_strategy": parse_enum(RefreshStrategy),
    **dict.fromkeys(
        (
            "try_next_host_on_transport_error",
            "enable_pipelining",
            "enable_rset",
            "allow_smtp_auth_plain_without_tls",
            "allow_smtp_auth_plain_without_valid_certificate",
            "enable_mta_sts",
            "enable_dane",
            "tls_prefer_openssl",
            "opportunistic_tls_reconnect_on_failed_handshake",
            "use_lmtp",
            "ignore_8bit_checks",
            "aggressive_connection_opening",
        ),
        parse_bool,
    ),
    "smtp_auth_plain_username": parse_str,
    "smtp_auth_plain_password": _key_source,
    "tls_certificate": _key_source,
    "tls_private_key": _key_source,
    "openssl_cipher_list": parse_str,
    "openssl_cipher_suites": parse_str,
    "openssl_options": parse_str,
    "rustls_cipher_suites": _strs,
    "provider_name": parse_str,
    "readyq_pool_name": parse_str,
    "dispatcher_wakeup_strategy": parse_enum(WakeupStrategy),
    "maintainer_wakeup_strategy": parse_enum(WakeupStrategy),
    "low_memory_reduction_policy": parse_enum(MemoryReductionPolicy),
    "no_memory_reduction_policy": parse_enum(MemoryReductionPolicy),
}
