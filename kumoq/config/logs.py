"""``kumo.configure_local_logs{...}``: where and how log records are written (reference §2.8).

Every key of KumoMTA's ``LogFileParams`` is accepted and validated; unknown keys are rejected.

Deviation from KumoMTA, to be documented for operators: KumoMTA always writes zstd-compressed
segments (``compression_level`` defaults to 0, meaning the zstd default level). kumoq writes
**plain JSON lines** when ``compression_level`` is absent (``None``), and streaming zstd frames
only when it is set: ``0`` means the zstd default level, ``1`` to ``21`` pick a level. Reasons:
plain segments can be read with ``cat``/``jq``/``grep`` while they are being written, and
compression runs on the same interpreter as delivery, so leaving it off keeps that CPU for
mail. Set ``compression_level = 0`` to get segments that KumoMTA's tools (``tailer``) read.
``kumoq tail`` reads both kinds (it tells them apart by the zstd magic bytes).

Status of the other keys in kumoq: ``meta``, ``headers``, ``max_file_size``,
``max_segment_duration`` and ``back_pressure`` are honoured by kumoq.logs;
``per_record[<type>].enable`` is honoured through ``LocalLogsConfig.record_enabled``; the other
``per_record`` keys (``suffix``, ``log_dir``, ``segment_header``, ``template``) are not
implemented yet and are rejected with a ConfigError rather than silently ignored (a default
empty ``segment_header`` is accepted). ``filter_event`` is stored for the caller to run.
``min_free_space`` / ``min_free_inodes`` are validated and stored but not enforced yet.

``kumo.configure_log_hook{...}`` (``LogHookConfig``) takes KumoMTA's ``LogHookParams``: ``name``
(required), ``back_pressure``, ``meta``, ``headers``, ``per_record`` (as above) and
``deferred_spool`` (accepted; kumoq always spools a hook's message, see docs/deviations.md).

Pure: imports only kumoq.config.values and kumoq.errors (no IO, no kumoq.logs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from kumoq.config.values import (
    build,
    parse_bool,
    parse_duration,
    parse_int,
    parse_size,
    parse_str,
    parse_str_list,
)
from kumoq.errors import ConfigError

__all__ = ["RECORD_TYPE_NAMES", "LocalLogsConfig", "LogHookConfig", "PerRecordConfig"]

# Kept equal to kumoq.logs.records.RecordType (a test checks); config may not import kumoq.logs.
RECORD_TYPE_NAMES: Final = (
    "Reception",
    "Delivery",
    "Bounce",
    "TransientFailure",
    "Expiration",
    "Delayed",
    "AdminBounce",
    "Rejection",
    "AdminRebind",
    "OOB",
    "Feedback",
    "DeferredInjectionRebind",
    "XferOut",
    "XferIn",
    "DeadLetter",
    "Any",
)

_MAX_COMPRESSION_LEVEL: Final = 21


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    """A list of strings; an empty Lua table may arrive as an empty dict."""
    if isinstance(value, Mapping) and not value:
        return ()
    return parse_str_list(key, value)


def _not_supported(key: str, value: Any) -> None:
    raise ConfigError(f"{key}: not supported by kumoq yet (got {value!r})")


def _segment_header(key: str, value: Any) -> str:
    text = parse_str(key, value)
    if text:
        raise ConfigError(f"{key}: not supported by kumoq yet (got {value!r})")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class PerRecordConfig:
    """One ``per_record`` entry; only ``enable`` is implemented by kumoq."""

    enable: bool = True
    segment_header: str = ""

    @classmethod
    def from_mapping(cls, table: str, mapping: Any) -> PerRecordConfig:
        return build(
            cls,
            table,
            mapping,
            {
                "enable": parse_bool,
                "segment_header": _segment_header,
                "suffix": _not_supported,
                "log_dir": _not_supported,
                "template": _not_supported,
            },
        )


def _per_record(key: str, value: Any) -> Mapping[str, PerRecordConfig]:
    if isinstance(value, list | tuple) and not value:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table keyed by record type, got {value!r}")
    out: dict[str, PerRecordConfig] = {}
    for kind, entry in value.items():
        if kind not in RECORD_TYPE_NAMES:
            allowed = ", ".join(RECORD_TYPE_NAMES)
            raise ConfigError(f"{key}: unknown record type {kind!r}; expected one of {allowed}")
        out[kind] = PerRecordConfig.from_mapping(f"{key}.{kind}", entry)
    return MappingProxyType(out)


def _compression_level(key: str, value: Any) -> int:
    level = parse_int(key, value, minimum=0)
    if level > _MAX_COMPRESSION_LEVEL:
        raise ConfigError(
            f"{key}: must be 0 (zstd default) to {_MAX_COMPRESSION_LEVEL}, got {value!r}"
        )
    return level


def _positive_size(key: str, value: Any) -> int:
    size = parse_size(key, value)
    if size < 1:
        raise ConfigError(f"{key}: must be at least 1 byte, got {value!r}")
    return size


def _positive_duration(key: str, value: Any) -> float:
    seconds = parse_duration(key, value)
    if seconds <= 0:
        raise ConfigError(f"{key}: must be greater than zero, got {value!r}")
    return seconds


_PERCENT = re.compile(r"^\s*\d+(\.\d+)?\s*%\s*$")


def _free_threshold(key: str, value: Any) -> str | int:
    """``'10%'`` or an absolute amount (bytes / inodes, as a number or a size string)."""
    if isinstance(value, str) and _PERCENT.match(value):
        percent = float(value.strip().rstrip("%"))
        if percent > 100:
            raise ConfigError(f"{key}: a percentage must be at most 100%, got {value!r}")
        return value.strip()
    return parse_size(key, value)


def _log_dir(key: str, value: Any) -> str:
    text = parse_str(key, value)
    if not text:
        raise ConfigError(f"{key}: must not be empty")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalLogsConfig:
    """One ``configure_local_logs`` call; each one gets its own writer.

    ``compression_level`` ``None`` means plain JSON lines (a kumoq deviation, see the module
    docstring); ``meta`` and ``headers`` list what the records capture (a trailing ``*`` is a
    prefix wildcard, ``*`` alone means all meta keys; header names match case-insensitively).
    """

    log_dir: str
    max_file_size: int = 1_000_000_000
    max_segment_duration: float | None = None
    compression_level: int | None = None
    back_pressure: int = 128_000
    meta: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    per_record: Mapping[str, PerRecordConfig] = field(default_factory=lambda: MappingProxyType({}))
    filter_event: str | None = None
    min_free_space: str | int | None = None
    min_free_inodes: str | int | None = None

    @classmethod
    def from_mapping(cls, mapping: Any) -> LocalLogsConfig:
        return build(
            cls,
            "configure_local_logs",
            mapping,
            {
                "log_dir": _log_dir,
                "max_file_size": _positive_size,
                "max_segment_duration": _positive_duration,
                "compression_level": _compression_level,
                "back_pressure": lambda k, v: parse_int(k, v, minimum=1),
                "meta": _str_list,
                "headers": _str_list,
                "per_record": _per_record,
                "filter_event": parse_str,
                "min_free_space": _free_threshold,
                "min_free_inodes": _free_threshold,
            },
            required=("log_dir",),
        )

    @property
    def compressed(self) -> bool:
        """True when segments are zstd frames (``compression_level`` was set)."""
        return self.compression_level is not None

    def record_enabled(self, kind: str) -> bool:
        """Whether records of type ``kind`` go to this log: ``per_record[kind]``, else ``Any``."""
        per_record = self.per_record
        if not per_record:
            return True
        entry = per_record.get(kind) or per_record.get("Any")
        return entry.enable if entry is not None else True


def _hook_name(key: str, value: Any) -> str:
    text = parse_str(key, value)
    if not text:
        raise ConfigError(f"{key}: must not be empty")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class LogHookConfig:
    """One ``configure_log_hook`` call: each record is offered to the hook named ``name``.

    ``meta``, ``headers`` and ``per_record`` select as ``LocalLogsConfig``'s do;
    ``back_pressure`` bounds the records waiting for ``should_enqueue_log_record``.
    ``deferred_spool`` is accepted and has no effect: the hook's message is always spooled.
    """

    name: str
    back_pressure: int = 128_000
    meta: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    per_record: Mapping[str, PerRecordConfig] = field(default_factory=lambda: MappingProxyType({}))
    deferred_spool: bool = False

    @classmethod
    def from_mapping(cls, mapping: Any) -> LogHookConfig:
        return build(
            cls,
            "configure_log_hook",
            mapping,
            {
                "name": _hook_name,
                "back_pressure": lambda k, v: parse_int(k, v, minimum=1),
                "meta": _str_list,
                "headers": _str_list,
                "per_record": _per_record,
                "deferred_spool": parse_bool,
            },
            required=("name",),
        )

    def record_enabled(self, kind: str) -> bool:
        """Whether records of type ``kind`` are offered: ``per_record[kind]``, else ``Any``."""
        entry = self.per_record.get(kind) or self.per_record.get("Any")
        return entry.enable if entry is not None else True
