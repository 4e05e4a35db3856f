"""``kumo.configure_redis_throttles{...}``: the redis that throttles and connection limits share.

KumoMTA's parameters are those of ``redis.open`` (its docs/reference/redis/open.md):

- ``node``: a redis URL, ``redis://[<username>][:<password>@]<host>[:port][/<db>]``
  (``rediss://`` for TLS, ``unix:///path`` or ``redis+unix:///path`` for a socket), or a list
  of them (a redis cluster);
- ``pool_size`` (10): the most connections kept open;
- ``connect_timeout`` (30 s): how long a connection attempt may take;
- ``wait_timeout`` (30 s): how long a query waits for a free connection of the pool;
- ``response_timeout`` (none): how long a query waits for its answer;
- ``recycle_timeout``: KumoMTA's liveness check of a pooled connection; accepted and checked,
  no effect in kumoq (redis-py checks a pooled connection when it reads from it);
- ``read_from_replicas`` (false), ``username``, ``password``: for a cluster only (a single
  node takes its credentials from its URL, as in KumoMTA);
- ``cluster``: use a cluster client; by default true when several nodes are listed.

Durations are numbers of seconds or humantime strings (kumoq.config.values.parse_duration).

Pure: imports only kumoq.config.values and kumoq.errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from kumoq.config.values import (
    build,
    parse_bool,
    parse_duration,
    parse_int,
    parse_str,
    parse_str_list,
)
from kumoq.errors import ConfigError

__all__ = ["RedisThrottleConfig"]

_TABLE: Final = "configure_redis_throttles"
_SCHEMES: Final = ("redis", "rediss", "unix", "redis+unix")


def _node_url(key: str, value: str) -> str:
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid redis URL {value!r}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"{key}: invalid redis URL {value!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}"
        )
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise ConfigError(f"{key}: invalid redis URL {value!r}: no host name")
    if parts.scheme not in ("redis", "rediss") and not parts.path:
        raise ConfigError(f"{key}: invalid redis URL {value!r}: no socket path")
    if port == 0:
        raise ConfigError(f"{key}: invalid redis URL {value!r}: port 0")
    return text


def _nodes(key: str, value: Any) -> tuple[str, ...]:
    nodes = parse_str_list(f"{_TABLE}: {key}", value)
    if not nodes:
        raise ConfigError(f"{_TABLE}: {key}: expected at least one redis URL")
    return tuple(_node_url(f"{_TABLE}: {key}", node) for node in nodes)


def _duration(key: str, value: Any) -> float:
    return parse_duration(f"{_TABLE}: {key}", value)


@dataclass(frozen=True, slots=True)
class RedisThrottleConfig:
    """One ``kumo.configure_redis_throttles`` call (KumoMTA's ``RedisConnKey``)."""

    node: tuple[str, ...]
    pool_size: int = 10
    connect_timeout: float = 30.0
    wait_timeout: float = 30.0
    response_timeout: float | None = None
    recycle_timeout: float | None = None
    read_from_replicas: bool = False
    username: str | None = None
    password: str | None = None
    cluster: bool | None = None

    @property
    def is_cluster(self) -> bool:
        """A cluster client: ``cluster`` when given, else when several nodes are listed."""
        return len(self.node) > 1 if self.cluster is None else self.cluster

    def describe(self) -> str:
        """The nodes, for logs: without any password a URL carries."""
        shown = []
        for node in self.node:
            parts = urlsplit(node)
            if parts.password is not None:
                netloc = parts.netloc.rsplit("@", 1)[1]
                user = f"{parts.username}:***@" if parts.username else ":***@"
                node = parts._replace(netloc=user + netloc).geturl()
            shown.append(node)
        return ", ".join(shown)

    @classmethod
    def from_mapping(cls, mapping: Any) -> RedisThrottleConfig:
        return build(cls, _TABLE, mapping, _PARSERS, required=("node",))


_PARSERS: Final[dict[str, Any]] = {
    "node": _nodes,
    "pool_size": lambda k, v: parse_int(f"{_TABLE}: {k}", v, minimum=1),
    "connect_timeout": _duration,
    "wait_timeout": _duration,
    "response_timeout": _duration,
    "recycle_timeout": _duration,
    "read_from_replicas": parse_bool,
    "username": parse_str,
    "password": parse_str,
    "cluster": parse_bool,
}
