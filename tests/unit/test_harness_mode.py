"""kumoq.harness_mode: what the daemon changes under ``kumoq harness`` (KUMOQ_HARNESS_*), and
that nothing changes without it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from kumoq.config.queue import MaildirProtocol, QueueConfig, SmtpProtocol
from kumoq.declarations import load_policy
from kumoq.dns.resolver import DnsStatus
from kumoq.errors import ConfigError
from kumoq.harness_mode import (
    HARNESS_LISTEN,
    PLANNED_ADDRESS,
    HarnessMode,
    HarnessResolver,
    RerootedMaildir,
)
from kumoq.message import Message
from kumoq.scheduler.attempt import Attempt

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '0.0.0.0:25' }
  kumo.start_esmtp_listener { listen = '0.0.0.0:587' }
  kumo.start_http_listener { listen = '0.0.0.0:8000', trusted_hosts = {} }
  kumo.define_spool { name = 'data', path = '/var/spool/kumomta/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = '/var/log/kumomta' }
end)
"""


def mode(tmp_path: Path) -> HarnessMode:
    env = {
        "KUMOQ_HARNESS_MX": "127.0.0.1:2026",
        "KUMOQ_HARNESS_ROOT": str(tmp_path / "root"),
        "KUMOQ_HARNESS_LOG_DIR": str(tmp_path / "log"),
    }
    harness = HarnessMode.from_env(env)
    assert harness is not None
    return harness


def test_without_the_variable_there_is_no_harness_mode(tmp_path):
    assert HarnessMode.from_env({}) is None
    assert HarnessMode.from_env({"KUMOQ_HARNESS_ROOT": str(tmp_path)}) is None


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:", ":25", "127.0.0.1:99999", "x:y"])
def test_a_malformed_sink_address_is_a_config_error(value):
    with pytest.raises(ConfigError, match="KUMOQ_HARNESS_MX"):
        HarnessMode.from_env({"KUMOQ_HARNESS_MX": value})


def test_defaults_live_in_the_working_directory(tmp_path):
    harness = HarnessMode.from_env({"KUMOQ_HARNESS_MX": "[::1]:2525"}, cwd=tmp_path)
    assert harness == HarnessMode("::1", 2525, tmp_path / "harness-root", tmp_path / "harness-log")


def test_absolute_paths_move_under_the_root_and_relative_ones_stay(tmp_path):
    harness = mode(tmp_path)
    assert harness.reroot("/var/spool/kumomta") == str(tmp_path / "root/var/spool/kumomta")
    assert harness.reroot("./var/spool") == "./var/spool"
    assert harness.reroot("var/log") == "var/log"


def test_apply_rewrites_listeners_paths_and_adds_the_harness_log_and_http(tmp_path):
    policy = tmp_path / "init.lua"
    policy.write_text(POLICY)
    _, _, decl = load_policy(policy)
    harness = mode(tmp_path)
    harness.apply(decl)
    assert [cfg.listen for cfg in decl.listeners] == [HARNESS_LISTEN, HARNESS_LISTEN]
    # The harness's own HTTP listener comes first, open to 127.0.0.1; the policy's follows.
    assert [cfg.listen for cfg in decl.http_listeners] == [HARNESS_LISTEN, HARNESS_LISTEN]
    assert decl.http_listeners[0].trusted_hosts != ()
    assert decl.http_listeners[1].trusted_hosts == ()
    data, meta = decl.spool_pair()
    assert data.path == str(tmp_path / "root/var/spool/kumomta/data")
    assert meta.path == "./var/spool/meta"
    assert [cfg.log_dir for cfg in decl.logs] == [
        str(tmp_path / "root/var/log/kumomta"),
        str(tmp_path / "log"),
    ]
    assert decl.logs[1].meta == ("*",)


def test_the_resolver_gives_real_provider_sites_and_never_leaves_the_process():
    resolver = HarnessResolver()
    gmail = asyncio.run(resolver.resolve_mx("gmail.com"))
    assert gmail.status is DnsStatus.FOUND
    assert (5, "gmail-smtp-in.l.google.com.") in gmail.records
    # Any other domain is its own MX (implicit MX), and every name has the planned address.
    other = asyncio.run(resolver.resolve_mx("example.org"))
    assert other.status is DnsStatus.NO_DATA
    ip = asyncio.run(resolver.resolve_ip("mx.whatever.example"))
    assert ip.addresses == (PLANNED_ADDRESS,)


def test_the_policys_test_zones_come_first():
    zone = "$ORIGIN corp.test.\n@ IN MX 10 mx1\nmx1 IN A 10.1.2.3\n$ORIGIN gone.test.\n"
    resolver = HarnessResolver([zone])
    corp = asyncio.run(resolver.resolve_mx("corp.test"))
    assert corp.records == ((10, "mx1.corp.test."),)
    assert asyncio.run(resolver.resolve_ip("mx1.corp.test")).addresses == ("10.1.2.3",)
    assert asyncio.run(resolver.resolve_mx("gmail.com")).status is DnsStatus.FOUND


class Recording:
    def __init__(self) -> None:
        self.configs: list[QueueConfig] = []

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        self.configs.append(config)
        return Attempt.__new__(Attempt)


def test_an_absolute_maildir_path_is_moved_and_other_protocols_are_untouched(tmp_path):
    inner = Recording()
    maildir = RerootedMaildir(inner, mode(tmp_path))
    msg = Message.__new__(Message)
    base = QueueConfig()
    absolute = replace(base, protocol=MaildirProtocol(maildir_path="/var/mail/{{ domain }}"))
    relative = replace(base, protocol=MaildirProtocol(maildir_path="./var/maildir"))
    smtp = replace(base, protocol=SmtpProtocol())
    for config in (absolute, relative, smtp):
        asyncio.run(maildir.deliver(msg, config))
    moved, kept, other = inner.configs
    assert isinstance(moved.protocol, MaildirProtocol)
    assert moved.protocol.maildir_path == str(tmp_path / "root/var/mail/{{ domain }}")
    assert kept is relative
    assert other is smtp


def test_reroute_is_unverified_tls_to_the_sink(tmp_path):
    reroute = mode(tmp_path).reroute()
    assert (reroute.addr, reroute.port) == ("127.0.0.1", 2026)
    assert reroute.tls_context is not None
    assert not reroute.tls_context.check_hostname
