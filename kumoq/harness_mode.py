"""What ``kumoq serve`` does differently when ``kumoq harness`` runs it: the harness's one seam.

The harness (kumoq.testing.harness_run) runs the operator's policy file unmodified, in a scratch
directory, and sets these environment variables for the daemon it starts. Without
``KUMOQ_HARNESS_MX`` none of this applies, and the daemon logs a warning whenever it does.

- ``KUMOQ_HARNESS_MX=HOST:PORT``, the smart sink. Every outbound SMTP connection goes there
  (``kumoq.egress.connection_plan.Reroute``): the ready queue, its site name, path config,
  throttles, ``prohibited_hosts`` and ``skip_hosts`` are decided as in production, and only the
  connect is redirected. DNS never leaves the process (``HarnessResolver``): MX answers come from
  the policy's ``configure_test_resolver`` zones, else from ``PROVIDER_ZONE`` (the big
  mailbox providers, so that their site names are the real ones), else the domain is its own
  MX; every host name resolves to ``PLANNED_ADDRESS`` (TEST-NET-1, RFC 5737).
- ``KUMOQ_HARNESS_ROOT=DIR`` (default ``./harness-root``): absolute spool, log and
  ``maildir_path`` paths are moved under it (``/var/spool/kumomta`` becomes
  ``DIR/var/spool/kumomta``). Relative paths are left alone: they land in the daemon's working
  directory, the scratch directory. A ``maildir_path`` template is moved only when its text
  starts with ``/``.
- ``KUMOQ_HARNESS_LOG_DIR=DIR`` (default ``./harness-log``): a log destination of the harness's
  own, with every record type and every meta key, added to the policy's.
- Every ESMTP and HTTP listener binds ``127.0.0.1:0`` (the harness reads the ports from the
  ``listener on`` lines), and an HTTP listener of the harness's own, with the default
  ``trusted_hosts``, comes first: for ``/metrics.json`` and ``--http``, whatever the policy's
  own HTTP listeners ask of their clients.

L3, beside kumoq.daemon, which alone imports it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from kumoq.config.http import HttpListenerConfig
from kumoq.config.logs import LocalLogsConfig
from kumoq.config.queue import MaildirProtocol, QueueConfig
from kumoq.declarations import Declarations
from kumoq.dns.resolver import (
    DnsStatus,
    IpAnswer,
    IpLookupStrategy,
    MxAnswer,
    RecordsAnswer,
    TestResolver,
)
from kumoq.egress.connection_plan import Reroute
from kumoq.errors import ConfigError
from kumoq.message import Message
from kumoq.scheduler.attempt import Attempt, Deliverer

__all__ = [
    "HARNESS_LISTEN",
    "MX_VARIABLE",
    "PLANNED_ADDRESS",
    "PROVIDER_ZONE",
    "HarnessMode",
    "HarnessResolver",
    "RerootedMaildir",
]

MX_VARIABLE: Final = "KUMOQ_HARNESS_MX"
ROOT_VARIABLE: Final = "KUMOQ_HARNESS_ROOT"
LOG_DIR_VARIABLE: Final = "KUMOQ_HARNESS_LOG_DIR"
HARNESS_LISTEN: Final = "127.0.0.1:0"
PLANNED_ADDRESS: Final = "192.0.2.1"
"""What every host name resolves to under the harness: never connected to (the connection is
rerouted to the sink), and on no default ``prohibited_hosts`` list."""

PROVIDER_ZONE: Final = """
$ORIGIN .
$TTL 300
gmail.com.       MX 5  gmail-smtp-in.l.google.com.
gmail.com.       MX 10 alt1.gmail-smtp-in.l.google.com.
gmail.com.       MX 20 alt2.gmail-smtp-in.l.google.com.
gmail.com.       MX 30 alt3.gmail-smtp-in.l.google.com.
gmail.com.       MX 40 alt4.gmail-smtp-in.l.google.com.
googlemail.com.  MX 5  gmail-smtp-in.l.google.com.
googlemail.com.  MX 10 alt1.gmail-smtp-in.l.google.com.
googlemail.com.  MX 20 alt2.gmail-smtp-in.l.google.com.
googlemail.com.  MX 30 alt3.gmail-smtp-in.l.google.com.
googlemail.com.  MX 40 alt4.gmail-smtp-in.l.google.com.
yahoo.com.       MX 1  mta5.am0.yahoodns.net.
yahoo.com.       MX 1  mta6.am0.yahoodns.net.
yahoo.com.       MX 1  mta7.am0.yahoodns.net.
aol.com.         MX 1  mx-aol.mail.gm0.yahoodns.net.
outlook.com.     MX 5  outlook-com.olc.protection.outlook.com.
hotmail.com.     MX 2  hotmail-com.olc.protection.outlook.com.
live.com.        MX 2  live-com.olc.protection.outlook.com.
msn.com.         MX 2  msn-com.olc.protection.outlook.com.
icloud.com.      MX 10 mx01.mail.icloud.com.
icloud.com.      MX 10 mx02.mail.icloud.com.
me.com.          MX 10 mx01.mail.icloud.com.
me.com.          MX 10 mx02.mail.icloud.com.
"""
"""MX records of the big mailbox providers (a snapshot), so that their ready queues carry their
real site names, e.g. ``(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com``."""


class HarnessResolver:
    """DNS for the harness, with no network (see the module docstring)."""

    __test__ = False

    def __init__(self, policy_zones: Sequence[str] = ()) -> None:
        self._policy = TestResolver.from_zone_texts(policy_zones) if policy_zones else None
        self._providers = TestResolver.from_zone_text(PROVIDER_ZONE)

    async def resolve_mx(self, domain: str) -> MxAnswer:
        if self._policy is not None:
            answer = await self._policy.resolve_mx(domain)
            if answer.status is not DnsStatus.NXDOMAIN:
                return answer
        answer = await self._providers.resolve_mx(domain)
        if answer.status is DnsStatus.FOUND:
            return answer
        return MxAnswer(status=DnsStatus.NO_DATA, ttl=300.0)  # the domain is its own MX

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer:
        if self._policy is not None:
            answer = await self._policy.resolve_ip(host, strategy)
            if answer.status is DnsStatus.FOUND:
                return answer
        return IpAnswer(status=DnsStatus.FOUND, addresses=(PLANNED_ADDRESS,), ttl=300.0)

    async def resolve_records(self, name: str, rdtype: str) -> RecordsAnswer:
        """PTR and TXT (``kumo.dns.lookup_ptr``, ``lookup_txt``): the policy's zones, else
        NXDOMAIN."""
        if self._policy is not None:
            return await self._policy.resolve_records(name, rdtype)
        return RecordsAnswer(status=DnsStatus.NXDOMAIN, detail=f"NXDOMAIN: {name}")


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class HarnessMode:
    """The harness's settings, read once from the environment (``from_env``)."""

    sink_host: str
    sink_port: int
    root: Path
    log_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path | None = None) -> HarnessMode | None:
        """The settings, or None when ``KUMOQ_HARNESS_MX`` is unset (production).

        Raises ``ConfigError`` when it is set but is not ``HOST:PORT``."""
        value = env.get(MX_VARIABLE, "").strip()
        if not value:
            return None
        host, sep, port = value.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{MX_VARIABLE}={value!r}: expected HOST:PORT")
        base = cwd if cwd is not None else Path.cwd()
        root = Path(env.get(ROOT_VARIABLE) or base / "harness-root")
        log_dir = Path(env.get(LOG_DIR_VARIABLE) or base / "harness-log")
        return cls(host, int(port), root.absolute(), log_dir.absolute())

    def reroot(self, path: str) -> str:
        """An absolute ``path`` moved under the root; a relative one as it is."""
        if not os.path.isabs(path):
            return path
        return str(self.root / path.lstrip("/"))

    def apply(self, decl: Declarations) -> None:
        """Rewrite what ``init`` declared, in place: listeners, spool and log paths, and add the
        harness's log destination and HTTP listener (the first one)."""
        decl.listeners[:] = [replace(cfg, listen=HARNESS_LISTEN) for cfg in decl.listeners]
        decl.http_listeners[:] = [
            HttpListenerConfig(listen=HARNESS_LISTEN),
            *(replace(cfg, listen=HARNESS_LISTEN) for cfg in decl.http_listeners),
        ]
        for name, spool in list(decl.spools.items()):
            decl.spools[name] = replace(spool, path=self.reroot(spool.path))
        decl.logs[:] = [replace(cfg, log_dir=self.reroot(cfg.log_dir)) for cfg in decl.logs]
        decl.logs.append(
            LocalLogsConfig(log_dir=str(self.log_dir), max_segment_duration=10.0, meta=("*",))
        )

    def reroute(self) -> Reroute:
        """Every SMTP connection to the sink, TLS without verification (a self-signed sink)."""
        return Reroute(self.sink_host, self.sink_port, _insecure_context())

    def resolver(self, policy_zones: Sequence[str]) -> HarnessResolver:
        return HarnessResolver(policy_zones)

    def describe(self) -> str:
        return (
            f"harness mode ({MX_VARIABLE}): every SMTP delivery goes to "
            f"{self.sink_host}:{self.sink_port}, DNS is answered in process, listeners bind "
            f"{HARNESS_LISTEN}, absolute paths live under {self.root}, all records also go to "
            f"{self.log_dir}"
        )


class RerootedMaildir:
    """A maildir ``Deliverer`` whose absolute ``maildir_path`` is moved under the harness root."""

    def __init__(self, inner: Deliverer, mode: HarnessMode) -> None:
        self._inner = inner
        self._mode = mode

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        if isinstance(protocol, MaildirProtocol) and protocol.maildir_path.startswith("/"):
            moved = replace(protocol, maildir_path=self._mode.reroot(protocol.maildir_path))
            config = replace(config, protocol=moved)
        return await self._inner.deliver(msg, config)
