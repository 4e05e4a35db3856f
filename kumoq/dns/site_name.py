"""MX answers as values: ``MailExchanger`` and the ``factor_names`` site-name rule (reference §1.7).

Pure (L0): no asyncio, sockets, file IO, lupa or clock; imports nothing from kumoq and nothing
from dnspython. The resolver (``kumoq.dns.resolver``) turns DNS answers into plain
``(preference, exchange)`` pairs and calls ``MailExchanger.from_records``.

Rules (KumoMTA ``crates/mailexchanger``):

- MX records are grouped by preference (ascending); hosts within a preference are lowercased,
  stripped of the trailing dot and sorted alphabetically; ``hosts`` is that order flattened.
- No MX records: the domain itself is the implicit MX at preference 1.
- A single MX whose exchange is ``.`` is a null MX (RFC 7505): the caller bounces with
  ``556 5.1.10 Recipient address has a null MX``.
- A domain literal ``[1.2.3.4]`` (or ``[IPv6:::1]``) is its own single host; site name ``1.2.3.4``.
- ``site_name = factor_names(hosts)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "IMPLICIT_MX_PREFERENCE",
    "NULL_MX_CODE",
    "NULL_MX_ENHANCED",
    "NULL_MX_TEXT",
    "MailExchanger",
    "factor_names",
    "fully_qualified",
    "normalize_host",
]

IMPLICIT_MX_PREFERENCE: Final = 1
"""Preference given to the domain itself when it has no MX records."""

NULL_MX_CODE: Final = 556
NULL_MX_ENHANCED: Final = "5.1.10"
NULL_MX_TEXT: Final = "Recipient address has a null MX"


def normalize_host(name: str) -> str:
    """Lowercase ``name`` and strip one trailing dot (``MX.Example.COM.`` -> ``mx.example.com``).

    A ``:port`` suffix is kept as is (``a.b.net.:25`` -> ``a.b.net:25``). O(len(name)).
    """
    name = name.strip().lower()
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and host and "]" not in port:
        # name:port; the trailing dot, if any, sits before the colon.
        return f"{host.rstrip('.')}:{port}" if host.endswith(".") else name
    return name[:-1] if name.endswith(".") and name != "." else name


def fully_qualified(name: str) -> str:
    """``name`` as KumoMTA hands host names to the policy: with the root's trailing dot
    (``mx.example.com`` -> ``mx.example.com.``, ``a.b.net:25`` -> ``a.b.net.:25``). The null
    MX ``.``, an IP address and a name that has its dot already are returned as they are.
    O(len(name))."""
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and host and "]" not in port and ":" not in host:
        return f"{fully_qualified(host)}:{port}"
    if not name or name.endswith(".") or ":" in name or name.replace(".", "").isdigit():
        return name
    return name + "."


def factor_names(hosts: Iterable[str]) -> str:
    """Factor host names into one site name (reference §1.7).

    Each host is normalised (lowercase, trailing dot stripped), split on ``.`` (so a ``:port``
    stays attached to the last label) and reversed, TLD first. For each label position the
    distinct labels are kept in first-seen order; a host shorter than the longest contributes
    ``?`` for the positions it lacks. A position renders as its single label, or ``(a|b|c)``
    when there are several, with ``?`` appended when some host lacked it. Positions are
    reversed back and joined with ``.``::

        >>> factor_names(["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"])
        '(mta5|mta6).am0.yahoodns.net'

    O(total number of labels * distinct labels per position).
    """
    split: list[list[str]] = []
    longest = 0
    for host in hosts:
        labels = [label for label in normalize_host(host).split(".") if label]
        labels.reverse()
        split.append(labels)
        longest = max(longest, len(labels))

    positions: list[list[str]] = [[] for _ in range(longest)]
    missing = [False] * longest
    for labels in split:
        for i, label in enumerate(labels):
            seen = positions[i]
            if label not in seen:
                seen.append(label)
        for i in range(len(labels), longest):
            missing[i] = True

    rendered: list[str] = []
    for seen, lacked in zip(positions, missing, strict=True):
        text = seen[0] if len(seen) == 1 else "(" + "|".join(seen) + ")"
        rendered.append(text + "?" if lacked else text)
    rendered.reverse()
    return ".".join(rendered)


def _domain_literal(domain: str) -> str | None:
    """The address inside ``[...]`` (without an ``IPv6:`` tag), or None if not a literal."""
    if len(domain) > 2 and domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
        return inner
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MailExchanger:
    """The resolved mail exchangers of one domain, ready for a connection plan.

    ``by_pref`` maps each preference (ascending insertion order) to its sorted hosts; ``hosts``
    is every host in preference order. For a null MX ``hosts == ('.',)`` and ``site_name`` is
    ``''``: check ``is_null_mx`` before planning connections. ``is_secure`` is True only when
    the answer was DNSSEC-validated (the test and dnspython resolvers never claim that).
    """

    domain: str
    by_pref: Mapping[int, tuple[str, ...]] = field(hash=False)
    hosts: tuple[str, ...]
    site_name: str
    is_secure: bool = False
    is_null_mx: bool = False
    is_domain_literal: bool = False
    is_implicit_mx: bool = False

    @classmethod
    def from_records(
        cls,
        domain: str,
        records: Iterable[tuple[int, str]],
        *,
        is_secure: bool = False,
    ) -> MailExchanger:
        """Build from ``(preference, exchange)`` pairs as DNS returned them (any order).

        ``records`` empty means "no MX" and yields the implicit MX. O(n log n) in the records.
        """
        domain = normalize_host(domain)
        literal = _domain_literal(domain)
        if literal is not None:
            return cls(
                domain=domain,
                by_pref={IMPLICIT_MX_PREFERENCE: (literal,)},
                hosts=(literal,),
                site_name=literal,
                is_domain_literal=True,
            )

        pairs = [(int(pref), normalize_host(exchange)) for pref, exchange in records]
        if not pairs:
            return cls(
                domain=domain,
                by_pref={IMPLICIT_MX_PREFERENCE: (domain,)},
                hosts=(domain,),
                site_name=factor_names([domain]),
                is_secure=is_secure,
                is_implicit_mx=True,
            )
        if len(pairs) == 1 and pairs[0][1] in (".", ""):
            return cls(
                domain=domain,
                by_pref={pairs[0][0]: (".",)},
                hosts=(".",),
                site_name="",
                is_secure=is_secure,
                is_null_mx=True,
            )

        grouped: dict[int, set[str]] = {}
        for pref, host in pairs:
            grouped.setdefault(pref, set()).add(host)
        by_pref = {pref: tuple(sorted(grouped[pref])) for pref in sorted(grouped)}
        hosts = tuple(host for group in by_pref.values() for host in group)
        return cls(
            domain=domain,
            by_pref=by_pref,
            hosts=hosts,
            site_name=factor_names(hosts),
            is_secure=is_secure,
        )

    def to_plain(self) -> dict[str, object]:
        """KumoMTA's ``MailExchanger`` as plain data for ``kumo.dns.lookup_mx``: ``domain_name``,
        ``hosts`` and ``by_pref`` fully qualified, with the trailing dot (so KumoMTA's rollup
        patterns such as ``'%.google%.com%.$'`` match); ``site_name`` without; the flags.

        ``by_pref`` keys are ints and values lists, so the bridge can build Lua tables directly.
        A domain literal keeps its forms (``[192.0.2.1]``, ``192.0.2.1``).
        """
        fq = (lambda name: name) if self.is_domain_literal else fully_qualified
        return {
            "domain_name": fq(self.domain),
            "site_name": self.site_name,
            "hosts": [fq(h) for h in self.hosts],
            "by_pref": {pref: [fq(h) for h in hosts] for pref, hosts in self.by_pref.items()},
            "is_domain_literal": self.is_domain_literal,
            "is_secure": self.is_secure,
            "is_mx": not (self.is_implicit_mx or self.is_domain_literal),
        }
