"""``msg:dkim_verify()``, ``msg:arc_verify()`` and ``msg:arc_seal(signer, server_id, results)``.

dkimpy (kumoq.lua.dkim_verify) is the verifier and the ARC sealer; kumoq's own signer
(kumoq.dkim) stays the DKIM signing path. dkimpy asks DNS through a synchronous ``dnsfunc``,
so it never gets to the network: the methods (defined in ``kumo.lua``) first ask
``dkim_key_names`` for the ``<s>._domainkey.<d>`` names the DKIM-Signature (or
ARC-Message-Signature and ARC-Seal) headers point at, wait for their TXT records with the
``dkim.keys`` op (registered in ``Waits.ops``, asked through the resolver seam of
kumoq.dns.resolver as ``kumo.dns.lookup_txt`` is, so the test resolver of
``kumo.dns.configure_test_resolver`` answers in the harness; kept for their TTL), and hand
the answers back to the verifying function, whose ``dnsfunc`` reads only them. So the methods
wait in the events kumoq awaits and are an error the policy may ``pcall`` in the synchronous
ones (a message without signatures needs no DNS and works everywhere).

The results are KumoMTA's AuthenticationResult tables (``crates/dkim``): ``dkim_verify``
gives one per DKIM-Signature (at most ``MAX_SIGNATURES``), ``pass``, ``permerror`` (a bad
signature, body hash or key record) or ``temperror`` (no key record, DNS failure), with the
reason and the props ``header.d``, ``header.i`` (``@`` and the domain), ``header.s``,
``header.a``, ``header.b`` (the shortest unique prefix of ``b=``, at least 8 characters) and
``header.c``/``header.t``/``header.x`` when present. ``arc_verify`` gives one ``arc`` result:
``none``, ``pass`` or ``fail`` with the first reason, and ``header.oldest-pass`` when there are
ARC sets. ``arc_seal`` seals as KumoMTA does: nothing when the chain fails, else the next
instance with ``cv=none`` (first) or ``cv=pass``, the ARC-Authentication-Results recording the
given results under ``server_id``.

L2: imports kumoq.lua.dkim_verify (dkimpy), kumoq.dkim, kumoq.dns.resolver (the seam),
kumoq.lua.message (LuaApiError) and kumoq.lua.waits; never the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.dkim import DkimError, Signer
from kumoq.dns.resolver import DnsStatus, RecordResolver
from kumoq.lua import dkim_verify as engine
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits
from kumoq.message import Message

__all__ = [
    "CACHE_SIZE",
    "KEYS_OP",
    "MAX_SIGNATURES",
    "NEGATIVE_TTL",
    "DkimVerifyRuntime",
    "key_names",
    "python_api",
]

KEYS_OP: Final = "dkim.keys"
"""The op ``message.lua`` yields with the key names; answers name -> records or error text."""
MAX_SIGNATURES: Final = 10
"""DKIM-Signature headers verified per message (KumoMTA's limit against DoS)."""
CACHE_SIZE: Final = 1024
"""Key records kept per policy runtime, each for its TTL; the oldest goes first."""
NEGATIVE_TTL: Final = 60.0
"""Seconds a name without a key record is remembered (a DNS failure is not)."""

Answers = Mapping[str, Any]


class DkimVerifyRuntime(Protocol):
    """What these functions need of the policy runtime (``PolicyRuntime`` has it)."""

    @property
    def waits(self) -> Waits: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def opaque(self) -> dict[int, tuple[str, object]]: ...

    def message(self, h: int) -> Message: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def key_names(data: bytes, which: str) -> list[str]:
    """The ``<s>._domainkey.<d>`` names (lower case, no trailing dot) the message's DKIM
    signatures (``which='dkim'``) or ARC signatures and seals (``'arc'``) need."""
    wanted = (b"dkim-signature",) if which == "dkim" else (b"arc-message-signature", b"arc-seal")
    names: list[str] = []
    signatures = [v for k, v in engine.parse_headers(data) if k.lower() in wanted]
    if which == "dkim":
        signatures = signatures[:MAX_SIGNATURES]
    for value in signatures:
        tags = engine.tags_of(value)
        if tags is None or not tags.get("s") or not tags.get("d"):
            continue
        name = f"{tags['s']}._domainkey.{tags['d']}".lower().rstrip(".")
        if name not in names:
            names.append(name)
    return names


def _plain_answers(value: Any) -> dict[str, list[str] | str]:
    """The op's answers back from Lua: an empty Lua table reads as ``{}``, not ``[]``."""
    out: dict[str, list[str] | str] = {}
    if isinstance(value, Mapping):
        for name, answer in value.items():
            if isinstance(answer, str):
                out[str(name)] = answer
            elif isinstance(answer, list):
                out[str(name)] = [str(r) for r in answer]
            else:
                out[str(name)] = []
    return out


def python_api(rt: DkimVerifyRuntime) -> dict[str, Callable[..., Any]]:
    """``dkim_key_names``, ``dkim_verify``, ``arc_verify`` and ``arc_seal`` (each taking the
    message handle first); registers the ``dkim.keys`` op in ``rt.waits.ops``."""
    cache: dict[str, tuple[float, list[str]]] = {}  # name -> (expiry, records)

    def data_of(h: int) -> bytes:
        data = rt.message(h).data
        if data is None:
            raise LuaApiError("the message data is not loaded")
        return data

    def names(h: int, which: object) -> Any:
        if which not in ("dkim", "arc"):
            raise LuaApiError(f"kumoq internal: unknown signature kind {which!r}")
        head = rt.message(h).header_data()
        if head is None:
            raise LuaApiError("the message data is not loaded")
        return rt.to_lua(key_names(head, str(which)))

    async def fetch(arg: Any) -> tuple[bool, Any]:
        wanted = rt.from_lua(arg)
        if not isinstance(wanted, list | dict):
            return False, "kumoq internal: dkim.keys wants a list of names"
        dns = getattr(rt.waits.dns, "resolver", None)
        if dns is None:
            return False, "DNS is not available before init has completed"
        if not isinstance(dns, RecordResolver):
            return False, "the resolver in use cannot answer TXT queries"
        answers: dict[str, list[str] | str] = {}
        for item in wanted.values() if isinstance(wanted, dict) else wanted:
            name = str(item)
            now = rt.clock.now()
            hit = cache.get(name)
            if hit is not None and hit[0] > now:
                answers[name] = hit[1]
                continue
            answer = await dns.resolve_records(name, "TXT")
            if answer.status is DnsStatus.TEMP_FAIL:  # not remembered
                answers[name] = answer.detail or f"failed to resolve {name}"
                continue
            found = list(answer.records) if answer.status is DnsStatus.FOUND else []
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[name] = (now + (answer.ttl if found else NEGATIVE_TTL), found)
            answers[name] = found
        return True, rt.to_lua(answers)

    def dkim_verify(h: int, answers: object) -> Any:
        found = _plain_answers(rt.from_lua(answers))
        return rt.to_lua(engine.verify_dkim(data_of(h), found))

    def arc_verify(h: int, answers: object) -> Any:
        found = _plain_answers(rt.from_lua(answers))
        return rt.to_lua(engine.verify_arc(data_of(h), found).result)

    def arc_seal(
        h: int, signer_handle: object, server_id: object, results: object, answers: object
    ) -> None:
        entry = rt.opaque.get(signer_handle) if type(signer_handle) is int else None
        if entry is None or not isinstance(entry[1], Signer):
            raise DkimError(
                "expected a signer made by kumo.dkim.rsa_sha256_signer or "
                f"kumo.dkim.ed25519_signer, got {entry[0] if entry else 'another value'}"
            )
        if not isinstance(server_id, str) or not server_id:
            raise LuaApiError(f"server_id must be a non-empty string, got {server_id!r}")
        plain = rt.from_lua(results) if results is not None else []
        if plain == {}:
            plain = []
        if not isinstance(plain, list):
            raise LuaApiError(f"expected an array of authentication results, got {plain!r}")
        msg = rt.message(h)
        data = data_of(h)
        found = _plain_answers(rt.from_lua(answers))
        headers = engine.seal_arc(data, entry[1], server_id, plain, found, int(rt.clock.now()))
        if headers:
            msg.prepend_data(headers)

    rt.waits.ops[KEYS_OP] = fetch
    return {
        "dkim_key_names": rt.guard(None, names),
        "dkim_verify": rt.guard("dkim_verify", dkim_verify),
        "arc_verify": rt.guard("arc_verify", arc_verify),
        "arc_seal": rt.guard("arc_seal", arc_seal),
    }
