"""``kumo.start_http_listener{...}``: one HTTP listener's configuration (reference §2.6).

The keys and defaults are KumoMTA's (``HttpListenerParams`` in kumo-server-common):

- ``listen``: ``'127.0.0.1:8000'``; port 0 picks a free port.
- ``trusted_hosts``: ``{'127.0.0.1', '::1'}``; IP literals or CIDR blocks whose peers need no
  authentication.
- ``hostname``: the local host name (used for TLS and the ``hostname`` meta of injected mail).
- ``request_body_limit``: 2 MiB, after decompression; bytes, or a size such as ``'8 MiB'``.
- ``use_tls``: false. With ``use_tls = true`` and neither ``tls_certificate`` nor
  ``tls_private_key``, the listener uses a self-signed certificate for ``hostname`` (made
  once per process, as the ESMTP listener's: kumoq.smtp.tls); otherwise both are PEM file
  paths.
- ``tls_certificate``, ``tls_private_key``: a file path; a KeySource table (``vault_*``) is
  stored so that a KumoMTA policy loads, and refused only together with ``use_tls``.

Unknown keys are rejected naming the allowed ones.

Pure: imports only kumoq.config.values, kumoq.config.listener (``parse_listen``) and
kumoq.errors; no sockets, no files, no asyncio. Must not import kumoq.http.
"""

from __future__ import annotations

import ipaddress
import platform
from dataclasses import dataclass, field
from typing import Any, Final

from kumoq.config.listener import parse_listen
from kumoq.config.values import (
    Cidr,
    build,
    ip_in,
    parse_bool,
    parse_cidr_list,
    parse_hostname,
    parse_size,
)
from kumoq.errors import ConfigError

__all__ = ["DEFAULT_TRUSTED_HOSTS", "HttpListenerConfig"]

DEFAULT_TRUSTED_HOSTS: Final[tuple[Cidr, ...]] = (
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("::1/128"),
)

DEFAULT_REQUEST_BODY_LIMIT: Final = 2 * 1024 * 1024


def _default_hostname() -> str:
    return platform.node() or "localhost"


def _key_source(key: str, value: Any) -> str | dict[str, Any]:
    """A KeySource: a file path, or a table (``vault_mount``, ``key_data``...) kept as-is."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"{key}: expected a file path or a key source table, got {value!r}")


def _body_limit(key: str, value: Any) -> int:
    n = parse_size(key, value)
    if n <= 0:
        raise ConfigError(f"{key}: size must be positive, got {value!r}")
    return n


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpListenerConfig:
    """One HTTP listener. Sizes are bytes."""

    listen: str = "127.0.0.1:8000"
    trusted_hosts: tuple[Cidr, ...] = DEFAULT_TRUSTED_HOSTS
    hostname: str = field(default_factory=_default_hostname)
    request_body_limit: int = DEFAULT_REQUEST_BODY_LIMIT
    use_tls: bool = False
    tls_certificate: str | dict[str, Any] | None = None
    tls_private_key: str | dict[str, Any] | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> HttpListenerConfig:
        config = build(
            cls,
            "start_http_listener",
            mapping,
            {
                "listen": parse_listen,
                "trusted_hosts": parse_cidr_list,
                "hostname": parse_hostname,
                "request_body_limit": _body_limit,
                "use_tls": parse_bool,
                "tls_certificate": _key_source,
                "tls_private_key": _key_source,
            },
        )
        if config.use_tls:
            given = [k for k in ("tls_certificate", "tls_private_key") if getattr(config, k)]
            for key in given:
                if not isinstance(getattr(config, key), str):
                    raise ConfigError(
                        f"start_http_listener: {key} must be a PEM file path (kumoq reads no vault)"
                    )
            if len(given) == 1:
                other = "tls_private_key" if given[0] == "tls_certificate" else "tls_certificate"
                raise ConfigError(
                    f"start_http_listener: {given[0]} is set but {other} is not: give both, or "
                    "neither for a self-signed certificate"
                )
        return config

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to bind, IPv6 brackets removed (``listen`` is validated)."""
        if self.listen.startswith("["):
            host, _, port = self.listen[1:].partition("]:")
        else:
            host, _, port = self.listen.rpartition(":")
        return host, int(port)

    def trusts(self, peer_ip: str) -> bool:
        """True when ``peer_ip`` is in ``trusted_hosts`` (an IPv4-mapped IPv6 peer counts as
        IPv4); False for anything that is not an IP address. O(len(trusted_hosts))."""
        return ip_in(peer_ip, self.trusted_hosts)
