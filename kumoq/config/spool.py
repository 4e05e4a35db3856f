"""``kumo.define_spool{...}``: one spool definition (reference §2.7 and §7).

KumoMTA needs two spools, ``data`` (message bytes) and ``meta`` (the JSON record); kumoq opens
them as one pair (``kumoq.spool.open_spool``), and ``check_spool_pair`` says whether two
definitions can be paired.

Deviations from KumoMTA, on purpose:
- ``flush`` defaults to **true**: nothing is acknowledged before it is durable on disk. kumoq
  makes that cheap with group commit (concurrent stores share one disk sync).
- ``kind`` is ``'LocalDisk'`` (KumoMTA's file layout), ``'RocksDB'`` (KumoMTA's recommended
  production spool; kumoq keeps both halves in one database, see kumoq.spool.rocks) or
  ``'SQLite'`` (a kumoq extension: one database in WAL mode).
- ``rocks_params`` (``RocksParams``) is checked for every kind, as KumoMTA parses it for every
  kind, and acts only for RocksDB. Its keys are KumoMTA's; an unknown key is an error (KumoMTA
  ignores it), and so are, for a RocksDB spool, the KumoMTA keys kumoq cannot honour
  (``UNSUPPORTED_ROCKS_PARAMS``).

Pure: imports only kumoq.config.values and kumoq.errors; no file IO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from kumoq.config.values import (
    build,
    parse_bool,
    parse_duration,
    parse_int,
    parse_size,
    parse_str,
)
from kumoq.errors import ConfigError

__all__ = [
    "COMPRESSION_TYPES",
    "UNSUPPORTED_ROCKS_PARAMS",
    "MinFree",
    "RocksParams",
    "SpoolDefinition",
    "SpoolKind",
    "check_spool_pair",
]


class SpoolKind(StrEnum):
    """The storage behind a spool."""

    LOCAL_DISK = "LocalDisk"
    ROCKSDB = "RocksDB"
    SQLITE = "SQLite"


@dataclass(frozen=True, slots=True, kw_only=True)
class MinFree:
    """A free-space floor: a percentage of the filesystem, or an absolute amount.

    Exactly one of ``percent`` (0-100) and ``amount`` (bytes, or inodes) is set.
    """

    percent: float | None = None
    amount: int | None = None

    def floor(self, total: int) -> int:
        """The minimum free amount for a filesystem of ``total`` units (bytes or inodes)."""
        if self.percent is not None:
            return int(total * self.percent / 100.0)
        return self.amount or 0

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return str(self.amount)


def _parse_min_free(amount_parser: Any) -> Any:
    def parse(key: str, value: Any) -> MinFree:
        if isinstance(value, str) and value.strip().endswith("%"):
            text = value.strip()[:-1].strip()
            try:
                percent = float(text)
            except ValueError:
                raise ConfigError(
                    f"{key}: invalid percentage {value!r}: expected e.g. '10%'"
                ) from None
            if not 0.0 <= percent <= 100.0:
                raise ConfigError(f"{key}: percentage must be between 0% and 100%, got {value!r}")
            return MinFree(percent=percent)
        return MinFree(amount=amount_parser(key, value))

    return parse


def _parse_kind(key: str, value: Any) -> SpoolKind:
    try:
        return SpoolKind(value)
    except ValueError:
        raise ConfigError(
            f"{key}: invalid spool kind {value!r}; expected 'LocalDisk', 'RocksDB' or 'SQLite'"
        ) from None


def _parse_nonempty(key: str, value: Any) -> str:
    text = parse_str(key, value)
    if not text.strip():
        raise ConfigError(f"{key}: must not be empty")
    return text


COMPRESSION_TYPES: Final = ("None", "Snappy", "Zlib", "Bz2", "Lz4", "Lz4hc", "Zstd")
"""``rocks_params.compression_type`` values, KumoMTA's spelling (rocksdict links them all)."""

UNSUPPORTED_ROCKS_PARAMS: Final = {
    "log_level": "rocksdict does not let kumoq set the level of RocksDB's LOG file",
    "error_latch_duration": "kumoq has no RocksDB load-shedding gate: a failed write fails "
    "its stores (4xx) and the next batch reopens the database",
    "error_unlatch_duration": "kumoq has no RocksDB load-shedding gate",
    "allow_error_unlatch": "kumoq has no RocksDB load-shedding gate",
}
"""KumoMTA ``rocks_params`` keys kumoq refuses for a RocksDB spool, with the reason."""


def _positive(key: str, value: Any) -> int:
    return parse_int(key, value, minimum=1)


def _parse_compression(key: str, value: Any) -> str:
    if value not in COMPRESSION_TYPES:
        raise ConfigError(
            f"{key}: invalid compression type {value!r}; expected one of "
            + ", ".join(repr(c) for c in COMPRESSION_TYPES)
        )
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RocksParams:
    """``define_spool{rocks_params = {...}}``: KumoMTA's RocksDB tuning keys that kumoq honours.

    Sizes are bytes (an integer or ``'64 MiB'``), durations seconds (a number or
    ``'6 hours'``); None keeps RocksDB's default. ``limit_concurrent_stores`` and
    ``limit_concurrent_removes`` always hold in kumoq: one writer thread makes every write, so
    at most one is ever in flight. ``store_deadline`` bounds how long a batch waits while
    RocksDB holds writes back (a write stall) before its stores fail.
    """

    increase_parallelism: int | None = None
    optimize_level_style_compaction: int | None = None
    optimize_universal_style_compaction: int | None = None
    paranoid_checks: bool = False
    compression_type: str = "Snappy"
    compaction_readahead_size: int | None = None
    level_compaction_dynamic_level_bytes: bool = False
    max_open_files: int | None = None
    write_buffer_size: int | None = None
    level0_stop_writes_trigger: int | None = None
    memtable_huge_page_size: int | None = None
    log_file_time_to_roll: float = 86400.0
    obsolete_files_period: float = 6 * 3600.0
    limit_concurrent_stores: int | None = None
    limit_concurrent_loads: int | None = None
    limit_concurrent_removes: int | None = None
    store_deadline: float = 30.0
    unsupported: tuple[str, ...] = ()
    """The ``UNSUPPORTED_ROCKS_PARAMS`` keys that were given (refused for a RocksDB spool)."""

    @classmethod
    def from_mapping(cls, mapping: Any) -> RocksParams:
        if not isinstance(mapping, dict):
            raise ConfigError(f"rocks_params: expected a table, got {mapping!r}")
        unsupported = tuple(sorted(k for k in mapping if k in UNSUPPORTED_ROCKS_PARAMS))
        params: RocksParams = build(
            cls,
            "rocks_params",
            {k: v for k, v in mapping.items() if k not in UNSUPPORTED_ROCKS_PARAMS},
            {k: _in_rocks_params(p) for k, p in _ROCKS_PARSERS.items()},
        )
        if (
            params.optimize_level_style_compaction is not None
            and params.optimize_universal_style_compaction is not None
        ):
            raise ConfigError(
                "rocks_params: optimize_level_style_compaction and "
                "optimize_universal_style_compaction cannot both be set"
            )
        return replace(params, unsupported=unsupported) if unsupported else params

    def check_supported(self) -> None:
        """ConfigError naming the first key kumoq cannot honour, with the supported ones."""
        if self.unsupported:
            key = self.unsupported[0]
            why = UNSUPPORTED_ROCKS_PARAMS[key]
            raise ConfigError(
                f"rocks_params: {key!r} is not supported by kumoq ({why}); "
                f"supported keys are: {', '.join(sorted(_ROCKS_PARSERS))}"
            )


def _in_rocks_params(parser: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``parser`` with its errors naming the key as ``rocks_params.<key>``."""

    def parse(key: str, value: Any) -> Any:
        return parser(f"rocks_params.{key}", value)

    return parse


_ROCKS_PARSERS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "increase_parallelism": _positive,
    "optimize_level_style_compaction": parse_size,
    "optimize_universal_style_compaction": parse_size,
    "paranoid_checks": parse_bool,
    "compression_type": _parse_compression,
    "compaction_readahead_size": parse_size,
    "level_compaction_dynamic_level_bytes": parse_bool,
    "max_open_files": _positive,
    "write_buffer_size": parse_size,
    "level0_stop_writes_trigger": _positive,
    "memtable_huge_page_size": parse_size,
    "log_file_time_to_roll": parse_duration,
    "obsolete_files_period": parse_duration,
    "limit_concurrent_stores": _positive,
    "limit_concurrent_loads": _positive,
    "limit_concurrent_removes": _positive,
    "store_deadline": parse_duration,
}


def _parse_rocks_params(key: str, value: Any) -> RocksParams:
    return RocksParams.from_mapping(value)


def _parse_inodes(key: str, value: Any) -> int:
    return parse_int(key, value, minimum=0)


_TEN_PERCENT = MinFree(percent=10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolDefinition:
    """One ``define_spool`` call.

    ``name``: ``'data'`` or ``'meta'`` are the two the daemon uses. ``path``: the directory
    that holds the spool (created on start). ``flush``: make every store durable (fdatasync /
    fsync, or SQLite ``synchronous=FULL``) before it is acknowledged; default true.
    ``min_free_space`` / ``min_free_inodes``: reception is refused below these floors.
    """

    name: str
    path: str
    kind: SpoolKind = SpoolKind.LOCAL_DISK
    flush: bool = True
    min_free_space: MinFree = _TEN_PERCENT
    min_free_inodes: MinFree = _TEN_PERCENT
    rocks_params: RocksParams | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_mapping(cls, mapping: Any) -> SpoolDefinition:
        spool: SpoolDefinition = build(
            cls,
            "define_spool",
            mapping,
            {
                "name": _parse_nonempty,
                "path": _parse_nonempty,
                "kind": _parse_kind,
                "flush": parse_bool,
                "min_free_space": _parse_min_free(parse_size),
                "min_free_inodes": _parse_min_free(_parse_inodes),
                "rocks_params": _parse_rocks_params,
            },
            required=("name", "path"),
        )
        if spool.kind is SpoolKind.ROCKSDB and spool.rocks_params is not None:
            spool.rocks_params.check_supported()
        return spool


def _normalized(path: str) -> str:
    # Pure string normalisation (no filesystem access): "a/b/" and "a//b" are "a/b".
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return ("/" if path.startswith("/") else "") + "/".join(parts)


def check_spool_pair(data: SpoolDefinition, meta: SpoolDefinition) -> None:
    """Raise ConfigError unless ``data`` and ``meta`` can be opened together as one spool.

    Both must have the same kind. Two LocalDisk spools need distinct paths (each keeps its
    files in ``<path>/data/``); two SQLite spools may share one.
    """
    if data.kind is not meta.kind:
        raise ConfigError(
            f"define_spool: the 'data' spool is {data.kind.value!r} but the 'meta' spool is "
            f"{meta.kind.value!r}; both must have the same kind"
        )
    if data.kind is SpoolKind.LOCAL_DISK and _normalized(data.path) == _normalized(meta.path):
        raise ConfigError(
            f"define_spool: the 'data' and 'meta' LocalDisk spools both use path {data.path!r}; "
            "give each its own directory"
        )
