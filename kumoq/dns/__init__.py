"""DNS for egress: MX resolution, site-name factoring, the resolver seam and the MX cache.

``site_name`` is pure (L0); ``resolver`` is L1 (asyncio, dnspython). Nothing here imports the
queue, delivery or Lua layers.
"""

from __future__ import annotations

from kumoq.dns.mx_cache import MxCache, MxFailure, MxFailureKind, MxResult
from kumoq.dns.resolver import (
    DnsPythonResolver,
    DnsStatus,
    IpAnswer,
    IpLookupStrategy,
    MxAnswer,
    Resolver,
    TestResolver,
)
from kumoq.dns.site_name import MailExchanger, factor_names

__all__ = [
    "DnsPythonResolver",
    "DnsStatus",
    "IpAnswer",
    "IpLookupStrategy",
    "MailExchanger",
    "MxAnswer",
    "MxCache",
    "MxFailure",
    "MxFailureKind",
    "MxResult",
    "Resolver",
    "TestResolver",
    "factor_names",
]
