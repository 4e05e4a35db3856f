"""Deep validation of a policy, for ``kumoq validate`` (issue 13).

``validate_policy(path, queues)`` loads the policy and runs ``init`` (as the daemon does), then
fires what the daemon would fire for mail to each sample queue: ``get_queue_config``, then for
SMTP and custom Lua delivery ``get_egress_pool`` and ``get_egress_source`` for each of the
pool's sources, and for SMTP ``get_egress_path_config(routing_domain, source, site_name)``; then
``validate_config`` (KumoMTA fires it from ``kumod --validate``; each ``kumo.validation_failed()``
is an error at its line). Each handler kumoq never calls is a warning
(kumoq.lua.events.unfired_handlers). It also checks that every spool
path, log directory and literal maildir path is writable or creatable, and that listener
addresses are addresses of this host. It returns a ``Report`` holding every finding, never only
the first: errors (the daemon would fail, or mail would fail) and warnings (worth a look).

No DNS query leaves the machine: a handler that calls ``kumo.dns.lookup_mx`` is answered by the
policy's test resolver (``kumo.dns.configure_test_resolver``) when it has one, and is skipped
with a warning otherwise; the site name of an SMTP queue without ``mx_list`` is then its routing
domain. Without a test resolver ``validate_config`` runs as at the daemon's start: a lookup is an
error the handler may ``pcall``, so that every handler runs (skipping the event would skip the
handlers after the one that looked up, as KumoMTA's shaping helper does before the queue
helper's). Nothing is left behind: writability is probed with a temporary file, removed at once,
in the directory or its nearest existing parent; no spool lock is taken, so a running kumoq
may keep its spool while its next policy is checked.

Each finding names the policy file and line: ``PolicyError.location`` for an event that failed;
for a declaration made in ``init`` (a spool, a log, a listener), ``init`` runs once more in a
fresh runtime that stops at that declaration, so Lua names the line.

L3: imports kumoq.declarations, the Lua bridge, kumoq.dns, kumoq.config and kumoq.egress.names;
imported only by the CLI.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import os
import re
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from kumoq.config.egress import (
    UNSPECIFIED,
    UNSPECIFIED_POOL,
    UNSPECIFIED_SOURCE,
    EgressPool,
    EgressSource,
)
from kumoq.config.queue import CustomLuaProtocol, MaildirProtocol, QueueConfig, SmtpProtocol
from kumoq.declarations import BUILDERS, Declarations, PolicyEgress, load_policy
from kumoq.delivery.template import MaildirPathTemplates, TemplateExpansionError
from kumoq.dns.mx_cache import MxCache, MxResult
from kumoq.dns.resolver import TestResolver
from kumoq.dns.site_name import MailExchanger
from kumoq.egress.names import mx_list_site_name
from kumoq.errors import ConfigError, KumoqError, PolicyError, PolicyWouldBlock
from kumoq.lua.events import PolicyEvents, unfired_handlers
from kumoq.lua.runtime import PolicyRuntime
from kumoq.message import parse_queue_name

__all__ = ["DEFAULT_DOMAINS", "Finding", "Report", "validate_policy"]

T = TypeVar("T")
Severity = Literal["error", "warning"]

#: the sample queues when none are given: the big mailbox providers, and example.com
DEFAULT_DOMAINS: Final = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "aol.com",
    "example.com",
)
_DNS_RERUNS: Final = 8  # a handler waiting for DNS runs again once its answer is at hand
_UNKNOWN_KEY: Final = re.compile(r"unknown key '([^']+)'; allowed keys are: (.+)$")
_LOCATION: Final = re.compile(r"^([^\n]+?):(\d+): ")


@dataclass(slots=True, kw_only=True)
class Finding:
    """One error or warning. ``location`` is ``file:line`` (or the file alone); ``where`` lists
    what it came from (``get_queue_config for queue gmail.com``, ...), one entry per case."""

    severity: Severity
    message: str
    location: str
    where: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "message": self.message, "where": self.where}

    def as_text(self, shown: int = 3) -> str:
        text = f"{self.location}: {self.severity}: {self.message}"
        if self.where:
            more = len(self.where) - shown
            text += "\n    in " + "; ".join(self.where[:shown])
            text += f" (and {more} more)" if more > 0 else ""
        return text


@dataclass(slots=True)
class Report:
    """What ``validate_policy`` found and what it checked."""

    policy: str
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, list[str]] = field(default_factory=dict)
    declared: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: Severity, message: str, location: str, where: str | None) -> None:
        """Record a finding; the same message at the same place gains one more ``where``."""
        for found in self.findings:
            if (found.severity, found.message, found.location) == (severity, message, location):
                break
        else:
            found = Finding(severity=severity, message=message, location=location)
            self.findings.append(found)
        if where is not None and where not in found.where:
            found.where.append(where)

    def check(self, what: str, name: str) -> None:
        names = self.checked.setdefault(what, [])
        if name not in names:
            names.append(name)

    def summary(self) -> str:
        counts = ", ".join(f"{len(v)} {k}" for k, v in self.checked.items())
        if self.ok:
            head = f"{self.policy}: OK ({self.declared})" if self.declared else f"{self.policy}: OK"
        else:
            head = f"{self.policy}: {len(self.errors)} error(s)"
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return f"{head}{warned}" + (f"; checked {counts}" if counts else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "ok": self.ok,
            "errors": [f.as_dict() for f in self.errors],
            "warnings": [f.as_dict() for f in self.warnings],
            "checked": self.checked,
        }


class _Failed:
    """What ``_Validator._fire`` returns when the event failed (the finding is recorded)."""


_FAILED: Final = _Failed()


class _NoDns:
    """The DNS the policy sees without a test resolver: nothing is known, nothing is asked, so
    a handler calling ``kumo.dns.lookup_mx`` raises PolicyWouldBlock and is skipped."""

    def peek(self, domain: str, now: float) -> MxResult | None:
        return None

    async def lookup_mx(self, domain: str, now: float) -> MxResult:  # pragma: no cover
        raise RuntimeError("kumoq validate sends no DNS queries")


def validate_policy(path: Path, queues: Sequence[str] = ()) -> Report:
    """Validate the policy at ``path`` against the sample ``queues`` (queue names,
    ``campaign:tenant@domain!routing_domain``; ``DEFAULT_DOMAINS`` when empty)."""
    report = Report(str(path))
    try:
        runtime, events, decl = load_policy(path)
    except KumoqError as exc:
        _record(report, path, exc, None)
        return report
    report.declared = (
        f"{len(decl.listeners)} SMTP listener(s), {len(decl.spools)} spool(s), "
        f"{len(decl.logs)} log destination(s)"
    )
    validator = _Validator(path, runtime, events, decl, report)
    try:
        for name in queues or DEFAULT_DOMAINS:
            validator.queue(name)
        validator.validate_config(decl.validation_failures)
        unfired = unfired_handlers(runtime.handler_names, validator.constructors)
        for site, text in [*unfired, *runtime.unknown_fields]:
            report.add("warning", text, _in_policy_dir(path, site), None)
    finally:
        validator.close()
    _check_declarations(path, decl, report)
    return report


class _Validator:
    """Fires the events for the sample queues, recording into the report."""

    def __init__(
        self,
        path: Path,
        runtime: PolicyRuntime,
        events: PolicyEvents,
        decl: Declarations,
        report: Report,
    ) -> None:
        self._path = path
        self._events = events
        self._waits = runtime.waits
        self._egress = PolicyEgress(events)
        self._report = report
        self.constructors: set[str] = set()  # custom_lua constructors the queues name
        self._runner: asyncio.Runner | None = None
        self._mx: MxCache | None = None
        if decl.test_zones:
            self._runner = asyncio.Runner()
            self._mx = MxCache(TestResolver.from_zone_texts(decl.test_zones))
            runtime.waits.dns = self._mx
        else:
            runtime.waits.dns = _NoDns()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()

    def _fire(self, event: str, where: str, fn: Callable[..., T], *args: Any) -> T | _Failed:
        """``fn(*args)``, a call of ``event``; a failure is recorded and gives ``_FAILED``."""
        for _ in range(_DNS_RERUNS):
            try:
                return fn(*args)
            except PolicyWouldBlock as wait:
                if self._runner is None:
                    what = str(wait).removeprefix("the policy is waiting for ")
                    text = (
                        f"{event} needs DNS (kumo.dns.lookup_mx), and validate sends no DNS "
                        "queries: skipped (configure_test_resolver answers them)"
                    )
                    self._note("warning", text, event, f"{where}, which asked for {what}")
                    return _FAILED
                self._runner.run(_awaited(wait.wait()))
            except KumoqError as exc:
                _record(self._report, self._path, exc, where, event)
                return _FAILED
        self._note("error", f"still waiting for DNS after {_DNS_RERUNS} runs", event, where)
        return _FAILED

    def _note(self, severity: Severity, message: str, event: str, where: str) -> None:
        """A finding Lua gave no line for: at the line of ``event``'s handler."""
        self._report.add(severity, message, _handler_line(self._path, event), where)

    def queue(self, name: str) -> None:
        report = self._report
        report.check("queue(s)", name)
        parts = parse_queue_name(name)
        where = f"get_queue_config for queue {name}"
        args = (parts.domain, parts.tenant, parts.campaign, parts.routing_domain)
        got = self._fire("get_queue_config", where, self._events.get_queue_config, *args)
        if isinstance(got, _Failed):
            return
        config = got or QueueConfig()
        protocol = config.protocol
        if isinstance(protocol, MaildirProtocol):
            self._maildir(protocol.maildir_path, where)
            return
        if isinstance(protocol, CustomLuaProtocol):
            self.constructors.add(protocol.constructor)
        elif not isinstance(protocol, SmtpProtocol):
            return
        routing = parts.routing_domain or parts.domain
        pool = self._pool(config.egress_pool or UNSPECIFIED, name)
        if pool is None:
            return
        if not any(entry.weight > 0 for entry in pool.entries):
            text = f"egress pool {pool.name!r} has no source with a weight above 0: it cannot send"
            self._note("warning", text, "get_egress_pool", f"queue {name}")
        site = self._site(protocol, routing) if isinstance(protocol, SmtpProtocol) else None
        for entry in pool.entries:
            source = self._source(entry.name, name)
            if source is None or site is None:
                continue
            report.check("egress path(s)", f"{source.name}->{site}")
            event = "get_egress_path_config"
            where = f"{event}({routing!r}, {source.name!r}, {site!r}) for queue {name}"
            self._fire(
                event, where, self._egress.get_egress_path_config, routing, source.name, site
            )

    def _pool(self, name: str, queue: str) -> EgressPool | None:
        self._report.check("egress pool(s)", name)
        if name == UNSPECIFIED:
            return UNSPECIFIED_POOL
        where = f"get_egress_pool({name!r}) for queue {queue}"
        got = self._fire("get_egress_pool", where, self._egress.get_egress_pool, name)
        return None if isinstance(got, _Failed) else got

    def _source(self, name: str, queue: str) -> EgressSource | None:
        self._report.check("egress source(s)", name)
        if name == UNSPECIFIED:
            return UNSPECIFIED_SOURCE
        where = f"get_egress_source({name!r}) for queue {queue}"
        got = self._fire("get_egress_source", where, self._egress.get_egress_source, name)
        if isinstance(got, _Failed):
            return None
        if got.source_address is not None:
            problem = _bind_problem(got.source_address)
            if problem is not None:
                text = f"source_address {got.source_address} {problem}"
                self._note("warning", text, "get_egress_source", where)
        return got

    def _site(self, protocol: SmtpProtocol, routing: str) -> str:
        """The site name: from ``mx_list``, from the test resolver, else the routing domain."""
        if protocol.mx_list:
            return mx_list_site_name(protocol.mx_list)
        if self._runner is not None and self._mx is not None:
            result = self._runner.run(self._mx.lookup_mx(routing, time.time()))
            if isinstance(result, MailExchanger):
                return result.site_name
        return routing

    def _maildir(self, maildir_path: str, where: str) -> None:
        self._report.check("maildir path(s)", maildir_path)
        location = _handler_line(self._path, "get_queue_config")
        if not MaildirPathTemplates.is_literal(maildir_path):
            try:
                MaildirPathTemplates().compile(maildir_path)
            except TemplateExpansionError as exc:
                self._report.add("error", f"maildir_path {maildir_path!r}: {exc}", location, where)
            return
        problem = writable_problem(maildir_path)
        if problem is not None:
            self._report.add("error", f"maildir_path {maildir_path!r}: {problem}", location, where)

    def validate_config(self, failures: list[str]) -> None:
        """Fire ``validate_config``; each ``kumo.validation_failed()`` call (at a ``failures``
        location, also those made earlier, in ``init``) is an error there."""
        if self._events.has_handler("validate_config"):
            self._report.check("validate_config handler(s)", "validate_config")
            dns = self._waits.dns
            if self._runner is None:
                self._waits.dns = None  # as at the daemon's start: lookups fail, handlers go on
            try:
                self._fire("validate_config", "validate_config", self._events.validate_config)
            finally:
                self._waits.dns = dns
        for where in failures:
            text = (
                "validate_config: the policy called kumo.validation_failed() to report a "
                "failure (what it printed says why)"
            )
            self._report.add("error", text, _in_policy_dir(self._path, where), "validate_config")


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


def _record(
    report: Report, path: Path, exc: KumoqError, where: str | None, event: str | None = None
) -> None:
    """An exception as an error naming the policy's file and line."""
    message = str(exc)
    location = exc.location if isinstance(exc, PolicyError) else None
    m = _LOCATION.match(message)
    if m is not None and location == f"{m.group(1)}:{m.group(2)}":
        message = message[m.end() :]
    hint = _UNKNOWN_KEY.search(message)
    if hint is not None:
        close = difflib.get_close_matches(hint.group(1), hint.group(2).split(", "), n=1)
        message += f" (did you mean {close[0]!r}?)" if close else ""
    if location is None:
        where_line = _handler_line(path, event) if event is not None else str(path)
    else:
        where_line = _in_policy_dir(path, location)
    report.add("error", message, where_line, where)


def _in_policy_dir(path: Path, location: str) -> str:
    """``init.lua:12`` (Lua names chunks relative to the policy's directory) as a path the
    operator can open: ``policy/init.lua:12``."""
    file, _, line = location.rpartition(":")
    candidate = path.parent / file
    return f"{candidate}:{line}" if file and candidate.is_file() else location


def _handler_line(path: Path, event: str) -> str:
    """Where the policy file registers its handler for ``event`` (``kumo.on('event', ...``),
    for a finding Lua gave no line for; the file alone when it is not found there."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return str(path)
    pattern = re.compile(r"""\bon\s*\(\s*['"]""" + re.escape(event) + r"""['"]""")
    for number, line in enumerate(lines, 1):
        if pattern.search(line):
            return f"{path}:{number}"
    return str(path)


def writable_problem(directory: str) -> str | None:
    """None when a file can be created in ``directory``, or in its nearest existing parent
    when it does not exist yet (the daemon creates it); else why not. Probes with a temporary
    file, removed at once."""
    target = Path(directory).absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory, so {target} cannot be created"
    try:
        fd, name = tempfile.mkstemp(prefix=".kumoq-validate-", dir=probe)
    except OSError as exc:
        verb = "write to" if probe == target else f"create {target}: cannot write to"
        return f"cannot {verb} {probe}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def _bind_problem(host: str) -> str | None:
    """None when ``host`` (an IP address) is an address of this host or a wildcard; else why
    not. Binds port 0 on it and closes at once: no packet is sent, no port stays taken."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host == "localhost":
            return None
        return "is a name, not an address: binding it needs a name lookup"
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(ip), 0))
    except OSError as exc:
        return f"is not an address of this host ({exc.strerror or exc})"
    return None


def _check_declarations(path: Path, decl: Declarations, report: Report) -> None:
    """Spool paths and log directories writable or creatable; listeners on addresses of this
    host, no two on one port."""
    paths = [
        ("define_spool", i, f"spool {s.name!r} path", s.path)
        for i, s in enumerate(decl.spools.values())
    ]
    paths += [("configure_local_logs", i, "log_dir", c.log_dir) for i, c in enumerate(decl.logs)]
    for kind, index, what, directory in paths:
        report.check("spool and log path(s)", directory)
        problem = writable_problem(directory)
        if problem is not None:
            line = _declaration_line(path, kind, index)
            report.add("error", f"{kind}: {what} {directory!r}: {problem}", line, f"{kind} in init")
    seen: dict[tuple[str, str], str] = {}
    listeners = [("start_esmtp_listener", i, c.listen) for i, c in enumerate(decl.listeners)]
    listeners += [("start_http_listener", i, c.listen) for i, c in enumerate(decl.http_listeners)]
    for kind, index, listen in listeners:
        report.check("listener(s)", listen)
        host, _, port = listen.rpartition(":")  # checked by the config table
        host = host.strip("[]")
        problem = _bind_problem(host)
        if problem is None and port != "0" and (host, port) in seen:
            problem = f"is the address of a {seen[host, port]} too"
        seen.setdefault((host, port), kind)
        if problem is not None:
            severity: Severity = "warning" if "a name" in problem else "error"
            line = _declaration_line(path, kind, index)
            report.add(severity, f"{kind}: listen {listen!r} {problem}", line, f"{kind} in init")


def _declaration_line(path: Path, kind: str, index: int) -> str:
    """Where ``init`` makes its ``index``-th ``kind`` declaration: ``init`` runs again in a
    fresh runtime whose declare callback fails there, and Lua names the calling line."""
    seen = 0

    def declare(declared: str, value: object) -> None:
        nonlocal seen
        if declared == kind:
            if seen == index:
                raise ConfigError("kumoq validate stops here")
            seen += 1

    try:
        PolicyRuntime(path, builders=BUILDERS, declare=declare).fire_init()
    except PolicyError as exc:
        if exc.location is not None:
            return _in_policy_dir(path, exc.location)
    return _handler_line(path, "init")
