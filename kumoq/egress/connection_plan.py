"""Where a ready queue connects: the candidate hosts of its site, in order, and the connect.

``plan_targets`` turns the path's ``mx_list`` (as written) or the site's MX hosts (preference
order, shuffled within one preference, as KumoMTA does) into addresses, resolving names through
the ``Resolver`` seam. A candidate on ``prohibited_hosts`` bounces the message (``550 5.4.4``);
candidates on ``skip_hosts`` are left out, and a plan with no candidate left is a transient
failure. ``connect`` tries the candidates in order and returns the first session that opens.

Reference §1.7-1.9. Imports the SMTP client (``kumoq.delivery.smtp``) and the DNS seam; the
choice of source, site and ready queue is made above, in ``kumoq.egress.smtp_dispatch``.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from kumoq.delivery.smtp import ConnectFailure, SmtpClientSession
from kumoq.dns.resolver import DnsStatus, Resolver
from kumoq.egress.names import parse_mx_list_entry
from kumoq.egress.ready_queue import ReadyQueue, transient
from kumoq.logs.records import RecordType, Response
from kumoq.scheduler.attempt import Attempt

__all__ = ["Target", "connect", "plan_targets"]


@dataclass(slots=True)
class Target:
    """One candidate host: its name (for TLS and the records), address and port if fixed."""

    name: str
    addr: str
    port: int | None


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
        try:
            ipaddress.ip_address(name)
            targets.append(Target(name, name, port))
            continue
        except ValueError:
            pass
        answer = await resolver.resolve_ip(name)
        if answer.status is DnsStatus.FOUND:
            targets.extend(Target(name, a, port) for a in answer.addresses)
    path = ready.path
    for t in targets:
        ip = ipaddress.ip_address(t.addr)
        if any(ip in net for net in path.prohibited_hosts):
            return ready.attempt(
                RecordType.Bounce,
                Response(550, (5, 4, 4), f"{t.addr} is on the list of prohibited_hosts", None),
            )
    before = len(targets)
    targets = [
        t for t in targets
        if not any(ipaddress.ip_address(t.addr) in net for net in path.skip_hosts)
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
    ready: ReadyQueue, resolver: Resolver, rng: random.Random, hostname: str
) -> SmtpClientSession | Attempt:
    """A new session to the first candidate that answers, or the attempt saying none did."""
    plan = await plan_targets(ready, resolver, rng)
    if isinstance(plan, Attempt):
        return plan
    path = ready.path
    ehlo = path.ehlo_domain or ready.source.ehlo_domain or hostname
    errors: list[str] = []
    for target in plan:
        port = ready.source.remote_port or target.port or path.smtp_port
        result = await SmtpClientSession.connect(
            target.name, target.addr, port, path=path, source=ready.source, ehlo_domain=ehlo
        )
        if not isinstance(result, ConnectFailure):
            return result
        errors.append(f"{target.name} {target.addr}:{port}: {result.reason}")
    return ready.attempt(
        RecordType.TransientFailure,
        transient(
            "KumoMTA internal: failed to connect to any candidate hosts: " + "; ".join(errors),
            code=400,
            enhanced=None,
        ),
    )
