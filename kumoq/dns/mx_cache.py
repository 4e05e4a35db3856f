"""The MX cache: resolved exchangers per domain for their TTL, and what a failed lookup means.

``MxCache.lookup_mx(domain, now)`` hands the caller either a ``MailExchanger`` or an
``MxFailure`` that says what to do (bounce or transfail). Negative answers are cached too
(NXDOMAIN for ``negative_ttl``, SERVFAIL for ``servfail_ttl``).

L1: asyncio; imports ``kumoq.dns.resolver`` (the ``Resolver`` seam) and ``kumoq.dns.site_name``;
must not import lupa, the scheduler, egress, delivery or Lua layers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, final

from kumoq.dns.resolver import DnsStatus, Resolver, normalize_name
from kumoq.dns.site_name import NULL_MX_CODE, NULL_MX_ENHANCED, NULL_MX_TEXT, MailExchanger

__all__ = [
    "DEFAULT_MX_CACHE_CAPACITY",
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_SERVFAIL_TTL",
    "MxCache",
    "MxFailure",
    "MxFailureKind",
    "MxResult",
]


class MxFailureKind(StrEnum):
    """Why ``MxCache.lookup_mx`` produced no usable exchanger."""

    NULL_MX = "null_mx"  # RFC 7505: the domain accepts no mail; bounce
    NXDOMAIN = "nxdomain"  # the domain does not exist
    DNS_FAIL = "dns_fail"  # SERVFAIL/timeout; transfail and retry


@dataclass(frozen=True, slots=True, kw_only=True)
class MxFailure:
    """An MX lookup the caller cannot deliver with, and the reply to log for it.

    ``permanent`` True means bounce with ``response``; False means log a ``TransientFailure``
    (``451 4.4.4 failed to resolve queue <queue>: <detail>``) and requeue with an increment.
    ``site`` is the scheduled queue's metrics site (``NXDOMAIN:<domain>``,
    ``DNSFAIL:<domain>``; ``''`` for a null MX, as KumoMTA's ``factor_names(['.'])``).
    ``exchanger`` is set for a null MX so ``kumo.dns.lookup_mx`` can still return it.
    """

    kind: MxFailureKind
    domain: str
    permanent: bool
    code: int
    enhanced: str
    text: str
    detail: str = ""
    exchanger: MailExchanger | None = None

    @property
    def response(self) -> str:
        """``"<code> <enhanced> <text>"``, e.g. ``556 5.1.10 Recipient address has a null MX``."""
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def site(self) -> str:
        if self.kind is MxFailureKind.NXDOMAIN:
            return f"NXDOMAIN:{self.domain}"
        if self.kind is MxFailureKind.DNS_FAIL:
            return f"DNSFAIL:{self.domain}"
        return ""


DEFAULT_NEGATIVE_TTL: Final = 300.0
"""Seconds an NXDOMAIN (or a no-MX implicit answer without a TTL) stays cached."""

DEFAULT_SERVFAIL_TTL: Final = 60.0
"""Seconds a SERVFAIL/timeout stays cached: short, so a flapping nameserver is retried soon
(the same 60 s KumoMTA applies to ready-queue resolution failures, reference §1.6)."""

DEFAULT_MX_CACHE_CAPACITY: Final = 65_536

MxResult = MailExchanger | MxFailure


@final
class MxCache:
    """Resolved MX per domain, cached for the DNS TTL; negative answers cached too.

    ``lookup_mx(domain, now)`` returns a ``MailExchanger`` or an ``MxFailure``:

    - found MX records, or none (implicit MX): a ``MailExchanger``, cached for the record TTL
      (``negative_ttl`` when the answer carried no TTL);
    - a null MX: ``MxFailure(NULL_MX, permanent, 556 5.1.10 Recipient address has a null MX)``,
      cached for the record TTL;
    - NXDOMAIN: cached for ``negative_ttl`` (default 300 s). Transient ``451 4.4.4`` as in
      KumoMTA (reference §1.6/§3.3) unless ``nxdomain_bounces=True``, then ``550 5.1.2``;
    - SERVFAIL/timeout: transient ``451 4.4.4``, cached for ``servfail_ttl`` (default 60 s).

    Domain literals (``[1.2.3.4]``) never reach the resolver. Concurrent misses for one domain
    share a single query. Time is passed in (``now``, seconds), so tests need no clock.
    Hit: O(1). At ``capacity`` the oldest inserted entry is dropped.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        servfail_ttl: float = DEFAULT_SERVFAIL_TTL,
        nxdomain_bounces: bool = False,
        capacity: int = DEFAULT_MX_CACHE_CAPACITY,
    ) -> None:
        self.resolver = resolver
        self.negative_ttl = negative_ttl
        self.servfail_ttl = servfail_ttl
        self.nxdomain_bounces = nxdomain_bounces
        self._capacity = capacity
        self._entries: dict[str, tuple[float, MxResult]] = {}
        self._inflight: dict[str, asyncio.Task[tuple[float, MxResult]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, domain: str, now: float) -> MxResult | None:
        """The cached, unexpired result for ``domain`` without querying (a domain literal is
        always answered, as ``lookup_mx`` does). O(1)."""
        key = normalize_name(domain)
        if key.startswith("["):
            return MailExchanger.from_records(key, ())
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def invalidate(self, domain: str) -> None:
        self._entries.pop(normalize_name(domain), None)

    def clear(self) -> None:
        self._entries.clear()

    async def lookup_mx(self, domain: str, now: float) -> MxResult:
        """Resolve ``domain`` (cached); see the class docstring for the outcomes."""
        key = normalize_name(domain)
        if key.startswith("["):
            return MailExchanger.from_records(key, ())
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._resolve(key, now))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        expires, result = await asyncio.shield(task)
        if key not in self._entries or self._entries[key][0] != expires:
            self._store(key, expires, result)
        return result

    def _store(self, key: str, expires: float, result: MxResult) -> None:
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self._capacity:
            del entries[next(iter(entries))]
        entries[key] = (expires, result)

    async def _resolve(self, domain: str, now: float) -> tuple[float, MxResult]:
        answer = await self.resolver.resolve_mx(domain)
        status = answer.status
        if status is DnsStatus.FOUND or status is DnsStatus.NO_DATA:
            records = answer.records if status is DnsStatus.FOUND else ()
            ttl = answer.ttl if answer.ttl > 0 else self.negative_ttl
            mx = MailExchanger.from_records(domain, records)
            if mx.is_null_mx:
                return now + ttl, MxFailure(
                    kind=MxFailureKind.NULL_MX,
                    domain=domain,
                    permanent=True,
                    code=NULL_MX_CODE,
                    enhanced=NULL_MX_ENHANCED,
                    text=NULL_MX_TEXT,
                    exchanger=mx,
                )
            return now + ttl, mx
        detail = f"MX lookup for {domain} failed: {answer.detail or status.value}"
        if status is DnsStatus.NXDOMAIN:
            if self.nxdomain_bounces:
                failure = MxFailure(
                    kind=MxFailureKind.NXDOMAIN,
                    domain=domain,
                    permanent=True,
                    code=550,
                    enhanced="5.1.2",
                    text=f"Recipient domain {domain} does not exist (NXDOMAIN)",
                    detail=detail,
                )
            else:
                failure = _transient(MxFailureKind.NXDOMAIN, domain, detail)
            return now + self.negative_ttl, failure
        return now + self.servfail_ttl, _transient(MxFailureKind.DNS_FAIL, domain, detail)


def _transient(kind: MxFailureKind, domain: str, detail: str) -> MxFailure:
    return MxFailure(
        kind=kind,
        domain=domain,
        permanent=False,
        code=451,
        enhanced="4.4.4",
        text=detail,
        detail=detail,
    )
