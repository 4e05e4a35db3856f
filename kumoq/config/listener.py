"""``kumo.start_esmtp_listener{...}``: the inbound SMTP listener's configuration (reference §2.5).

CORE keys are acted on by ``kumoq.smtp``; so are the NEXT keys ``max_connections``, ``meta``,
``tls_certificate`` and ``tls_private_key`` (both or neither: without them a self-signed pair
is made at start), and the LATER key ``tls_required_client_ca``. ``batch_handling``, ``peer``
and ``via`` are validated and stored so that a KumoMTA policy loads unchanged. Unknown keys
are rejected naming the allowed ones.

kumoq's own admission and abuse limits (not KumoMTA keys; docs/security.md#limits):
``max_connections_per_ip``, ``max_buffered_data``, ``max_buffered_data_per_ip``,
``max_errors_per_connection``, ``data_timeout``, and for failed SMTP AUTH
``max_auth_failures_per_ip`` within ``auth_failure_window``.

Pure: imports only kumoq.config.values and kumoq.errors; no sockets, no IO, no asyncio.
"""

from __future__ import annotations

import ipaddress
import platform
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from kumoq.config.values import (
    Cidr,
    build,
    ip_in,
    parse_bool,
    parse_cidr_list,
    parse_duration,
    parse_enum,
    parse_hostname,
    parse_int,
    parse_size,
    parse_str,
)
from kumoq.errors import ConfigError

__all__ = [
    "BatchHandling",
    "EsmtpListenerConfig",
    "InvalidLineEndings",
    "TraceHeaders",
    "parse_listen",
]

DEFAULT_RELAY_HOSTS: Final[tuple[Cidr, ...]] = (
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("::1/128"),
)


class InvalidLineEndings(StrEnum):
    """What DATA does with a lone CR or LF (KumoMTA's ``ConformanceDisposition``)."""

    DENY = "Deny"  # 552 5.6.0 message data must use CRLF for line endings
    ALLOW = "Allow"  # keep the bytes as they are
    FIX = "Fix"  # rewrite every lone CR or LF as CRLF


class BatchHandling(StrEnum):
    """How a multi-recipient transaction is split into messages (NEXT: only the default acts)."""

    BIFURCATE_ALWAYS = "BifurcateAlways"
    BATCH_BY_DOMAIN = "BatchByDomain"


def parse_listen(key: str, value: Any) -> str:
    """Validate ``host:port`` (``[::1]:25`` for IPv6; port 0 picks a free port)."""
    text = parse_str(key, value).strip()
    host, port = _split_listen(text)
    if host is None or port is None:
        raise ConfigError(
            f"{key}: invalid listen address {value!r}: expected 'host:port' or '[v6addr]:port'"
        )
    return text


def _split_listen(text: str) -> tuple[str | None, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None, None
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None, None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host or " " in host:
            return None, None
    if not port_text.isdigit() or int(port_text) > 65535:
        return None, None
    return host, int(port_text)


def _parse_meta_names(key: str, value: Any) -> tuple[str, ...]:
    # An empty Lua table may arrive as {} rather than [].
    if isinstance(value, dict) and not value:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a list of meta names, got {value!r}")


def _parse_table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {value!r}")
    return dict(value)


def _parse_key_source(key: str, value: Any) -> str | dict[str, Any]:
    """A KeySource: a file path, or a table such as ``{key_data='...'}`` (stored as-is)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{key}: expected a file path or a key source table, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceHeaders:
    """``trace_headers``: the Received: header and the supplemental ``X-KumoRef`` header."""

    received_header: bool = True
    supplemental_header: bool = True
    header_name: str = "X-KumoRef"
    include_meta_names: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Any) -> TraceHeaders:
        return build(
            cls,
            "trace_headers",
            mapping,
            {
                "received_header": parse_bool,
                "supplemental_header": parse_bool,
                "header_name": parse_str,
                "include_meta_names": _parse_meta_names,
            },
        )


def _default_hostname() -> str:
    return platform.node() or "localhost"


@dataclass(frozen=True, slots=True, kw_only=True)
class EsmtpListenerConfig:
    """One ESMTP listener. Durations are seconds, sizes bytes."""

    listen: str = "127.0.0.1:2025"
    hostname: str = field(default_factory=_default_hostname)
    banner: str = "KumoMTA"  # the greeting is ``220 <hostname> <banner>``
    relay_hosts: tuple[Cidr, ...] = DEFAULT_RELAY_HOSTS
    max_message_size: int = 20 * 1024 * 1024
    max_recipients_per_message: int = 1024
    max_messages_per_connection: int = 10_000
    client_timeout: float = 60.0
    data_processing_timeout: float = 300.0
    trace_headers: TraceHeaders = field(default_factory=TraceHeaders)
    deferred_spool: bool = False
    invalid_line_endings: InvalidLineEndings = InvalidLineEndings.DENY
    line_length_hard_limit: int = 998
    # kumoq extensions: admission and abuse limits (docs/security.md#limits).
    max_connections_per_ip: int = 64  # peers in relay_hosts are not held to it
    max_buffered_data: int = 256 * 1024 * 1024  # message data held by all connections
    max_buffered_data_per_ip: int = 64 * 1024 * 1024
    max_errors_per_connection: int = 20  # 4xx/5xx replies since the last accepted message
    data_timeout: float = 600.0  # from the 354 to the final dot
    max_auth_failures_per_ip: int = 5  # failed AUTH per client IP within auth_failure_window
    auth_failure_window: float = 300.0
    # NEXT: acted on (max_connections, the TLS keys, meta) or stored (the others).
    max_connections: int = 32768
    batch_handling: BatchHandling = BatchHandling.BIFURCATE_ALWAYS
    tls_certificate: str | dict[str, Any] | None = None  # a PEM file path or {key_data=...}
    tls_private_key: str | dict[str, Any] | None = None
    tls_required_client_ca: str | dict[str, Any] | None = None  # LATER in KumoMTA's terms
    meta: dict[str, Any] = field(default_factory=dict)
    peer: dict[str, Any] | None = None
    via: dict[str, Any] | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> EsmtpListenerConfig:
        def positive(key: str, value: Any) -> int:
            return parse_int(key, value, minimum=1)

        def positive_duration(key: str, value: Any) -> float:
            seconds = parse_duration(key, value)
            if seconds <= 0:
                raise ConfigError(f"{key}: duration must be positive, got {value!r}")
            return seconds

        def size(key: str, value: Any) -> int:
            n = parse_size(key, value)
            if n <= 0:
                raise ConfigError(f"{key}: size must be positive, got {value!r}")
            return n

        config = build(
            cls,
            "start_esmtp_listener",
            mapping,
            {
                "listen": parse_listen,
                "hostname": parse_hostname,
                "banner": parse_str,
                "relay_hosts": parse_cidr_list,
                "max_message_size": size,
                "max_recipients_per_message": positive,
                "max_messages_per_connection": positive,
                "client_timeout": positive_duration,
                "data_processing_timeout": positive_duration,
                "trace_headers": lambda key, value: TraceHeaders.from_mapping(value),
                "deferred_spool": parse_bool,
                "invalid_line_endings": parse_enum(InvalidLineEndings),
                "line_length_hard_limit": positive,
                "max_connections_per_ip": positive,
                "max_buffered_data": size,
                "max_buffered_data_per_ip": size,
                "max_errors_per_connection": positive,
                "data_timeout": positive_duration,
                "max_auth_failures_per_ip": positive,
                "auth_failure_window": positive_duration,
                "max_connections": positive,
                "batch_handling": parse_enum(BatchHandling),
                "tls_certificate": _parse_key_source,
                "tls_private_key": _parse_key_source,
                "tls_required_client_ca": _parse_key_source,
                "meta": _parse_table,
                "peer": _parse_table,
                "via": _parse_table,
            },
        )
        if (config.tls_certificate is None) != (config.tls_private_key is None):
            raise ConfigError(
                "start_esmtp_listener: tls_certificate and tls_private_key must be set together "
                "(without both, a self-signed certificate is made at start)"
            )
        return config

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to bind, IPv6 brackets removed."""
        host, port = _split_listen(self.listen)
        if host is None or port is None:  # pragma: no cover - validated by parse_listen
            raise ConfigError(f"listen: invalid listen address {self.listen!r}")
        return host, port

    def relay_allowed(self, peer_ip: str) -> bool:
        """True when ``peer_ip`` is in ``relay_hosts`` (an IPv4-mapped IPv6 peer counts as IPv4).

        O(len(relay_hosts)); the server calls it once per connection.
        """
        return ip_in(peer_ip, self.relay_hosts)
