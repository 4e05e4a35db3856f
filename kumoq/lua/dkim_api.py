"""``kumo.dkim.rsa_sha256_signer``, ``kumo.dkim.ed25519_signer`` and ``msg:dkim_sign(signer)``.

The signers are ``make_*``-style opaque objects: ``kumo.lua`` makes ``kumo.dkim.<kind>`` with
its ``maker``, whose Python side (kumoq.lua.kumo_api) calls ``BUILDERS[kind]`` with the
parameter table. The table is checked (unknown keys, missing ``domain``, ``selector``,
``headers`` or ``key``, a canonicalization other than ``Relaxed``/``Simple``) and the key is
loaded there, so a bad key file is an error at the policy's ``file:line``. ``key`` is
KumoMTA's KeySource: a file path (relative to the working directory, as in KumoMTA) or
``{key_data = '...'}``; the Vault sources are not available.

Built signers are cached by their parameters for ``ttl`` (default 300 s, seconds or a
duration string), as KumoMTA's ``dkim_signer_cache`` does: calling the constructor for each
message, as KumoMTA's examples do, reads the key file once per ttl. ``msg:dkim_sign(signer)``
(message.lua) hands ``python_api``'s ``dkim_sign`` the message handle and the signer's handle;
the signature is prepended with ``Message.prepend_data``, so a body the transaction's other
recipients share stays shared.

L2: imports kumoq.dkim, kumoq.clock, kumoq.message and the sibling time_api; must not import
the runtime (which imports this module).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.dkim import Algorithm, Canonicalization, DkimError, Signer, load_private_key
from kumoq.lua import time_api
from kumoq.message import Message

__all__ = ["BUILDERS", "SIGNER_KINDS", "DkimRuntime", "SignerCache", "build_signer", "python_api"]

SIGNER_KINDS: Final = ("rsa_sha256_signer", "ed25519_signer")
_ALGORITHMS: Final[dict[str, Algorithm]] = {
    "rsa_sha256_signer": "rsa-sha256",
    "ed25519_signer": "ed25519-sha256",
}
_KEYS: Final = frozenset(
    {
        "domain",
        "selector",
        "headers",
        "key",
        "atps",
        "atpsh",
        "agent_user_identifier",
        "expiration",
        "body_length",
        "reporting",
        "header_canonicalization",
        "body_canonicalization",
        "ttl",
        "over_sign",
    }
)
_CANON: Final[dict[str, Canonicalization]] = {
    "Relaxed": "relaxed",
    "Simple": "simple",
    "relaxed": "relaxed",
    "simple": "simple",
}
DEFAULT_TTL: Final = 300.0
CACHE_CAPACITY: Final = 1024


def _text(kind: str, params: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise DkimError(f"{kind}: missing required key {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise DkimError(f"{kind}: {key} must be a non-empty string, got {value!r}")
    return value


def _flag(kind: str, params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise DkimError(f"{kind}: {key} must be a boolean, got {value!r}")
    return value


def _key_data(kind: str, source: object) -> bytes:
    """KumoMTA's KeySource: a path, or ``{key_data = ...}``."""
    if isinstance(source, str):
        try:
            return Path(source).read_bytes()
        except OSError as e:
            raise DkimError(f"{kind}: cannot read the key file {source!r}: {e.strerror}") from None
    if isinstance(source, Mapping):
        if set(source) == {"key_data"} and isinstance(source["key_data"], str):
            return source["key_data"].encode("utf-8", "surrogateescape")
        raise DkimError(
            f"{kind}: key must be a file path or {{key_data = '...'}} "
            f"(the Vault key sources are not available in kumoq), got {dict(source)!r}"
        )
    raise DkimError(f"{kind}: key must be a file path or {{key_data = '...'}}, got {source!r}")


def build_signer(kind: str, params: Mapping[str, Any]) -> tuple[Signer, float]:
    """``(signer, ttl in seconds)`` from a ``kumo.dkim.<kind>`` parameter table. Raises
    DkimError naming the key at fault."""
    if not isinstance(params, Mapping):
        raise DkimError(f"{kind}: expected a parameter table, got {params!r}")
    unknown = sorted(set(params) - _KEYS)
    if unknown:
        raise DkimError(
            f"{kind}: unknown key {unknown[0]!r}; allowed keys are: {', '.join(sorted(_KEYS))}"
        )
    domain = _text(kind, params, "domain", True)
    selector = _text(kind, params, "selector", True)
    headers = params.get("headers")
    if headers is None:
        raise DkimError(f"{kind}: missing required key 'headers'")
    if not isinstance(headers, list) or not all(isinstance(h, str) and h for h in headers):
        raise DkimError(f"{kind}: headers must be a list of header names, got {headers!r}")
    if "key" not in params:
        raise DkimError(f"{kind}: missing required key 'key'")
    canon: dict[str, Canonicalization] = {}
    for which in ("header_canonicalization", "body_canonicalization"):
        value = params.get(which, "Relaxed")
        if value not in _CANON:
            raise DkimError(f"{kind}: {which} must be 'Relaxed' or 'Simple', got {value!r}")
        canon[which] = _CANON[value]
    expiration = params.get("expiration")
    if expiration is not None:  # a Lua number: an integer or a float such as 3600.0
        if type(expiration) not in (int, float) or not 0 <= expiration < 2**40:
            raise DkimError(f"{kind}: expiration must be a number of seconds, got {expiration!r}")
        expiration = int(expiration)
    try:
        ttl = time_api.parse_delta(params.get("ttl", 300)) / time_api.NS
    except ValueError as e:
        raise DkimError(f"{kind}: ttl: {e}") from None
    try:
        key = load_private_key(_key_data(kind, params["key"]), _ALGORITHMS[kind])
    except DkimError as e:
        text = str(e)
        raise DkimError(text if text.startswith(f"{kind}:") else f"{kind}: {text}") from None
    signer = Signer(
        key=key,
        domain=domain or "",
        selector=selector or "",
        headers=tuple(headers),
        header_canonicalization=canon["header_canonicalization"],
        body_canonicalization=canon["body_canonicalization"],
        over_sign=_flag(kind, params, "over_sign"),
        agent_user_identifier=_text(kind, params, "agent_user_identifier", False),
        expiration=expiration,
        body_length=_flag(kind, params, "body_length"),
        reporting=_flag(kind, params, "reporting"),
        atps=_text(kind, params, "atps", False),
        atpsh=_text(kind, params, "atpsh", False),
    )
    return signer, ttl


class SignerCache:
    """Signers by their parameters, each kept ``ttl`` seconds; least recently used first out
    past ``capacity``. Errors are not cached."""

    def __init__(
        self, capacity: int = CACHE_CAPACITY, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, Signer]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, kind: str, params: Mapping[str, Any]) -> Signer:
        key = kind + json.dumps(params, sort_keys=True, default=repr)
        now = self._monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        signer, ttl = build_signer(kind, params)
        self._entries[key] = (now + ttl, signer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return signer


CACHE: Final = SignerCache()


def _builder(kind: str) -> Callable[[Any], object]:
    return lambda params: CACHE.get(kind, params)


BUILDERS: Final[Mapping[str, Callable[[Any], object]]] = {k: _builder(k) for k in SIGNER_KINDS}
"""The ``kumo.dkim`` makers' builders, by kind (kumoq.lua.kumo_api falls back on them)."""


class DkimRuntime(Protocol):
    """What ``dkim_sign`` needs of the policy runtime (``PolicyRuntime`` has it)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def opaque(self) -> dict[int, tuple[str, object]]: ...

    def message(self, h: int) -> Message: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def python_api(rt: DkimRuntime) -> dict[str, Callable[..., Any]]:
    """``dkim_sign(message handle, signer handle)``, for message.lua's ``msg:dkim_sign``."""

    def dkim_sign(h: int, signer_handle: object) -> None:
        entry = rt.opaque.get(signer_handle) if type(signer_handle) is int else None
        if entry is None or not isinstance(entry[1], Signer):
            raise DkimError(
                "expected a signer made by kumo.dkim.rsa_sha256_signer or "
                f"kumo.dkim.ed25519_signer, got {entry[0] if entry else 'another value'}"
            )
        msg = rt.message(h)
        parts = msg.data_parts()
        if parts is None:
            raise DkimError("the message data is not loaded")
        msg.prepend_data(entry[1].sign(parts, int(rt.clock.now())))

    return {"dkim_sign": rt.guard("dkim_sign", dkim_sign)}
