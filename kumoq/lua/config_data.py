"""A built config back as the table that builds it: ``kumo.invoke_get_egress_path_config``.

KumoMTA serializes the effective ``EgressPathConfig`` into a Lua value of the shape of
``kumo.make_egress_path``'s parameters. ``config_data(obj)`` does that for kumoq's frozen config
dataclasses: each field under its own (KumoMTA's) name; durations (float seconds) as humantime
strings (``'1m'``, ``'500ms'``), as KumoMTA's duration fields serialize; enums as their KumoMTA
spelling; connection limits as an integer (``'local:N'`` when local); rates in their
``'100/h'`` form; CIDR lists as lists of strings; a field that is not set (None) left out. So
the table round-trips: ``kumo.make_egress_path(config)`` builds the same config.

Pure: imports only the standard library and the config value types.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping
from typing import Any

from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.lua.time_api import NS, human

__all__ = ["config_data"]


def _value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return human(round(value * NS))
    if isinstance(value, LimitSpec):
        return f"local:{value.limit}" if value.force_local else value.limit
    if isinstance(value, ThrottleSpec | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_data(value)
    raise TypeError(f"cannot represent a {type(value).__name__} in a config table")


def config_data(obj: object) -> dict[str, Any]:
    """The fields of a config dataclass as a ``make_*`` parameter table."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a built config, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is not None:
            out[f.name] = _value(value)
    return out
