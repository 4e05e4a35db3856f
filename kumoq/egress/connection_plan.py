"""Where a ready queue connects: the candidate hosts of its site, in order, and the connect.

``plan_targets`` turns the path's ``mx_list`` (as written) or the site's MX hosts (preference
order, shuffled within one preference, as KumoMTA does) into addresses, resolving names through
the ``Resolver`` seam. A candidate on ``prohibited_hosts`` bounces the message (``550 5.4.4``);
candidates on ``skip_hosts`` are left out, and a plan with no candidate left is a transient
failure. ``connect`` tries the candidates in order and returns the first session that opens.

``Reroute`` is ``kumoq harness``'s one change to the outbound path (docs/testing.md, "How the
harness routes mail"): the plan is made as in production, then every connection goes to the
smart sink's address and port instead of the planned one.

Reference §1.7-1.9. Imports the SMTP client (``kumoq.delivery.smtp``) and the DNS seam; the
choice of source, site and ready queue is made above, in ``kumoq.egress.smtp_dispatch``.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import ssl
from dataclasses import dataclass, replace

from kumoq.delivery.smtp import ConnectFailure, SmtpClientSession
from kumoq.dns.resolver import DnsStatus, Resolver
from kumoq.egress.names import parse_mx_list_entry
from kumoq.egress.ready_queue import ReadyQueue, transient
from kumoq.logs.records import RecordType, Response
from kumoq.scheduler.attempt import Attempt

__all__ = ["Reroute", "Target", "connect", "plan_targets"]


@dataclass(slots=True)
class Target:
    """One candidate host: its name (for TLS and the records), address and port if fixed."""

    name: str
    addr: str
    port: int | None


@dataclass(frozen=True, slots=True)
class Reroute:
    """Connect to ``addr:port`` (the harness's sink) instead of each planned target.

    Everything before the connect is unchanged: the candidates come from ``mx_list`` or the MX
    hosts, ``prohibited_hosts`` and ``skip_hosts`` apply to the planned addresses, and the
    planned host name is the one used for TLS and written in the records. Replaced are the
    address, the port (``remote_port``, ``smtp_port``, an ``mx_list`` port) and the source's
    ``source_address`` (the operator's sending IPs are not on a test machine).
    ``tls_context`` stands in for the verifying context of ``Opportunistic`` and ``Required``
    (the sink's certificate is self-signed).
    """

    addr: str
    port: int
    tls_context: ssl.SSLContext | None = None


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, None for a host name. Cached: every connection of a site
    asks again for the same few names and addresses, and a failed parse costs two exceptions."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _candidate_names(
    ready: ReadyQueue, rng: random.Random
) -> list[tuple[str, str | None, int | None]]:
    """``(name, address or None, port or None)`` per candidate, in the order to try them."""
    if ready.mx_list:
        return [parse_mx_list_entry(entry) for entry in ready.mx_list]
    assert ready.exchanger is not None
    names: list[tuple[str, str | None, int | None]] = []
    for hosts in ready.exchanger.by_pref.values():
        shuffled = list(hosts)
        rng.shuffle(shuffled)
        for host in shuffled:
            hostname, _, mx_port = host.partition(":")
            names.append((hostname, None, int(mx_port) if mx_port.isdigit() else None))
    return names


async def plan_targets(
    ready: ReadyQueue, resolver: Resolver, rng: random.Random
) -> list[Target] | Attempt:
    """The addresses to try for ``ready``, or the attempt that ends this try without one."""
    targets: list[Target] = []
    for name, addr, port in _candidate_names(ready, rng):
        if addr is not None:
            targets.append(Target(name, addr, port))
            continue
        if _address(name) is not None:
            targets.append(Target(name, name, port))
            continue
        answer = await resolver.resolve_ip(name)
        if answer.status is DnsStatus.FOUND:
            targets.extend(Target(name, a, port) for a in answer.addresses)
    path = ready.path
    for t in targets:
        ip = _address(t.addr) or ipaddress.ip_address(t.addr)  # not an address: ValueError
        if any(ip in net for net in path.prohibited_hosts):
            return ready.attempt(
                RecordType.Bounce,
                Response(550, (5, 4, 4), f"{t.addr} is on the list of prohibited_hosts", None),
            )
    before = len(targets)
    targets = [
        t for t in targets
        if not any((_address(t.addr) or ipaddress.ip_address(t.addr)) in net
                   for net in path.skip_hosts)
    ]  # fmt: skip
    if not targets:
        content = (
            "KumoMTA internal: MX consisted solely of hosts on the skip_hosts list"
            if before
            else "MX didn't resolve to any hosts"
        )
        return ready.attempt(RecordType.TransientFailure, transient(content))
    return targets


async def connect(
    ready: ReadyQueue,
    resolver: Resolver,
    rng: random.Random,
    hostname: str,
    reroute: Reroute | None = None,
) -> SmtpClientSession | Attempt:
    """A new session to the first candidate that answers, or the attempt saying none did;
    with ``reroute``, every candidate's connection goes to the reroute's address."""
    plan = await plan_targets(ready, resolver, rng)
    if isinstance(plan, Attempt):
        return plan
    path = ready.path
    ehlo = path.ehlo_domain or ready.source.ehlo_domain or hostname
    errors: list[str] = []
    source, tls_context = ready.source, None
    if reroute is not None:
        source, tls_context = replace(source, source_address=None), reroute.tls_context
    for target in plan:
        addr, port = target.addr, ready.source.remote_port or target.port or path.smtp_port
        if reroute is not None:
            addr, port = reroute.addr, reroute.port
        result = await SmtpClientSession.connect(
            target.name, addr, port, path=path, source=source, ehlo_domain=ehlo,
            tls_context=tls_context,
        )  # fmt: skip
        if not isinstance(result, ConnectFailure):
            return result
        errors.append(f"{target.name} {addr}:{port}: {result.reason}")
    return ready.attempt(
        RecordType.TransientFailure,
        transient(
            "KumoMTA internal: failed to connect to any candidate hosts: " + "; ".join(errors),
            code=400,
            enhanced=None,
        ),
    )
