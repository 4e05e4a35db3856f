"""``kumo.define_spool{...}``: one spool definition (reference §2.7 and §7).

KumoMTA needs two spools, ``data`` (message bytes) and ``meta`` (the JSON record); kumoq opens
them as one pair (``kumoq.spool.open_spool``), and ``check_spool_pair`` says whether two
definitions can be paired.

Deviations from KumoMTA, on purpose:
- ``flush`` defaults to **true**: nothing is acknowledged before it is durable on disk. kumoq
  makes that cheap with group commit (concurrent stores share one disk sync).
- ``kind`` is ``'LocalDisk'`` (KumoMTA's file layout) or ``'SQLite'`` (a kumoq extension: one
  database in WAL mode). ``'RocksDB'`` is refused. ``rocks_params`` is accepted and ignored, so
  a KumoMTA policy that sets it for a LocalDisk spool still loads.

Pure: imports only kumoq.config.values and kumoq.errors; no file IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kumoq.config.values import build, parse_bool, parse_int, parse_size, parse_str
from kumoq.errors import ConfigError

__all__ = ["MinFree", "SpoolDefinition", "SpoolKind", "check_spool_pair"]


class SpoolKind(StrEnum):
    """The storage behind a spool."""

    LOCAL_DISK = "LocalDisk"
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
    if value == "RocksDB":
        raise ConfigError(
            f"{key}: 'RocksDB' is not supported by kumoq; kumoq supports 'LocalDisk' and 'SQLite'"
        )
    try:
        return SpoolKind(value)
    except ValueError:
        raise ConfigError(
            f"{key}: invalid spool kind {value!r}; expected 'LocalDisk' or 'SQLite'"
        ) from None


def _parse_nonempty(key: str, value: Any) -> str:
    text = parse_str(key, value)
    if not text.strip():
        raise ConfigError(f"{key}: must not be empty")
    return text


def _parse_rocks_params(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {value!r}")
    return dict(value)


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
    rocks_params: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_mapping(cls, mapping: Any) -> SpoolDefinition:
        return build(
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
