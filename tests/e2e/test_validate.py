"""``kumoq validate`` fires the queue and egress events and checks paths (issue 13).

Each policy is real Lua written to tmp_path and checked by the real command line
(``python -m kumoq validate``) in a subprocess; every error must name the policy file and line.
The first seven tests are the seven mistakes of issue 13, which ``validate`` used to pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]

INIT = """local kumo = require 'kumo'
kumo.on('init', function()
  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
  kumo.define_spool { name = 'data', path = './var/spool/data' }
  kumo.define_spool { name = 'meta', path = './var/spool/meta' }
  kumo.configure_local_logs { log_dir = './var/log' }
end)
"""
INIT_LINES = INIT.count("\n")


def validate(tmp_path: Path, policy: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "init.lua"
    path.write_text(policy)
    return subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(path), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line_of(policy: str, text: str) -> int:
    """The 1-based line of the policy holding ``text``."""
    (number,) = [n for n, line in enumerate(policy.splitlines(), 1) if text in line]
    return number


def assert_error_at(result: subprocess.CompletedProcess[str], policy: str, text: str) -> None:
    """Exit 1, and an error line naming init.lua and the line that holds ``text``."""
    assert result.returncode == 1, result.stderr
    where = f"init.lua:{line_of(policy, text)}: error: "
    assert any(where in line for line in result.stderr.splitlines()), result.stderr


def queue_config(body: str) -> str:
    return INIT + (
        "kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n"
        f"  return kumo.make_queue_config {{ {body} }}\n"
        "end)\n"
    )


def egress_path(body: str) -> str:
    return INIT + (
        "kumo.on('get_egress_path_config', function(routing_domain, source, site_name)\n"
        f"  return kumo.make_egress_path {{ {body} }}\n"
        "end)\n"
    )


# -- the seven mistakes of issue 13 ----------------------------------------------------------


def test_a_typo_retry_intervl_in_make_queue_config(tmp_path):
    policy = queue_config("retry_intervl = '1 minute'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "retry_intervl")
    assert "unknown key 'retry_intervl'" in result.stderr
    assert "did you mean 'retry_interval'?" in result.stderr
    assert "get_queue_config for queue gmail.com" in result.stderr


def test_a_typo_max_agee_in_make_queue_config(tmp_path):
    policy = queue_config("max_agee = '2 days'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "max_agee")
    assert "unknown key 'max_agee'" in result.stderr
    assert "did you mean 'max_age'?" in result.stderr


def test_a_bad_rate_in_make_queue_config(tmp_path):
    policy = queue_config("max_message_rate = '10/fortnight'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "10/fortnight")
    assert "make_queue_config: max_message_rate: invalid rate '10/fortnight'" in result.stderr


def test_a_bad_rate_in_make_egress_path(tmp_path):
    policy = egress_path("max_message_rate = '10/fortnight'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "10/fortnight")
    assert "make_egress_path: max_message_rate: invalid rate '10/fortnight'" in result.stderr
    # no DNS: the site name is the routing domain
    assert "get_egress_path_config('gmail.com', 'unspecified', 'gmail.com')" in result.stderr


def test_a_bad_duration_in_make_queue_config(tmp_path):
    policy = queue_config("max_age = 'forever'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "forever")
    assert "max_age: invalid duration 'forever'" in result.stderr


def test_a_bad_tls_mode_in_make_egress_path(tmp_path):
    policy = egress_path("enable_tls = 'Sometimes'")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "Sometimes")
    assert "enable_tls: invalid value 'Sometimes'" in result.stderr


def test_an_unwritable_spool_path(tmp_path):
    (tmp_path / "file").write_text("a regular file: nothing can be created under it\n")
    spool = tmp_path / "file" / "spool"
    policy = INIT.replace("./var/spool/data", str(spool))
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, str(spool))
    assert f"define_spool: spool 'data' path '{spool}'" in result.stderr
    assert "is not a directory" in result.stderr


# -- every error, from where it came ---------------------------------------------------------

MANY_MISTAKES = (
    INIT.replace("'./var/log'", "'/proc/kumoq-validate-logs'")
    + """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'gmail.com' then
    return kumo.make_queue_config { retry_intervl = '1m' }
  end
  if domain == 'yahoo.com' then
    return kumo.make_queue_config { max_age = 'forever' }
  end
  return kumo.make_queue_config { egress_pool = 'warm' }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name, entries = { { name = 'ip-1' }, { name = 'ip-2', weight = 2 } },
  }
end)
kumo.on('get_egress_source', function(name)
  if name == 'ip-2' then
    return kumo.make_egress_source { name = name, ehlo_domian = 'mx.example' }
  end
  return kumo.make_egress_source { name = name }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  if routing_domain == 'aol.com' then
    return kumo.make_egress_path { enable_tls = 'Sometimes' }
  end
  return kumo.make_egress_path {}
end)
"""
)


def test_every_error_is_reported_with_its_line_and_origin(tmp_path):
    result = validate(tmp_path, MANY_MISTAKES)
    for text in ("retry_intervl", "forever", "ehlo_domian", "Sometimes", "/proc/kumoq"):
        assert_error_at(result, MANY_MISTAKES, text)
    assert "get_queue_config for queue gmail.com" in result.stderr
    assert "get_egress_source('ip-2') for queue outlook.com" in result.stderr
    assert "get_egress_path_config('aol.com', 'ip-1', 'aol.com') for queue aol.com" in result.stderr
    assert "configure_local_logs in init" in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'init.lua'}: 5 error(s);")


def test_json_report(tmp_path):
    result = validate(tmp_path, MANY_MISTAKES, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert len(report["errors"]) == 5
    (source,) = [e for e in report["errors"] if "ehlo_domian" in e["message"]]
    line = line_of(MANY_MISTAKES, "ehlo_domian")
    assert source["location"] == f"{tmp_path / 'init.lua'}:{line}"
    # one error, found for every queue whose pool uses the source
    assert len(source["where"]) == 5
    assert report["checked"]["queue(s)"] == [
        "gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "aol.com",
        "example.com",
    ]  # fmt: skip
    assert report["checked"]["egress source(s)"] == ["ip-1", "ip-2"]


def test_queue_option_names_the_sample_queues(tmp_path):
    policy = INIT + (
        "kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n"
        "  if tenant == 'acme' and campaign == 'fall' and routing_domain == 'relay.test' then\n"
        "    error('reached ' .. domain)\n"
        "  end\n"
        "end)\n"
    )
    assert validate(tmp_path, policy).returncode == 0  # the default queues have no tenant
    result = validate(tmp_path, policy, "--queue", "fall:acme@example.org!relay.test")
    assert_error_at(result, policy, "error('reached")
    assert "reached example.org" in result.stderr
    assert "for queue fall:acme@example.org!relay.test" in result.stderr


def test_a_bad_queue_name_is_a_usage_error(tmp_path):
    result = validate(tmp_path, INIT, "--queue", "acme@")
    assert result.returncode == 2
    assert "invalid queue name 'acme@'" in result.stderr


# -- DNS, validate_config, paths and listeners ------------------------------------------------

LOOKS_UP_MX = """
kumo.on('get_egress_path_config', function(routing_domain, source, site_name)
  local mx = kumo.dns.lookup_mx(routing_domain)
  error('site ' .. site_name .. ' hosts ' .. table.concat(mx.hosts, ','))
end)
"""


def test_a_handler_that_needs_dns_is_skipped_with_a_warning(tmp_path):
    policy = INIT + LOOKS_UP_MX
    result = validate(tmp_path, policy)
    assert result.returncode == 0, result.stderr
    line = line_of(policy, "get_egress_path_config")
    assert f"init.lua:{line}: warning: get_egress_path_config needs DNS" in result.stderr
    assert "for queue gmail.com, which asked for the MX records of gmail.com" in result.stderr
    assert ": OK (1 SMTP listener(s), 2 spool(s), 1 log destination(s)), 1 warning(s);" in (
        result.stdout
    )


def test_the_test_resolver_answers_dns_and_gives_the_site_name(tmp_path):
    zone = (
        "  kumo.dns.configure_test_resolver [[\n$ORIGIN example.com.\n"
        "@ 300 IN MX 10 mx1.example.net.\n@ 300 IN MX 20 mx2.example.net.\n]]\n"
    )
    policy = INIT.replace("kumo.configure_local_logs", zone + "  kumo.configure_local_logs")
    result = validate(tmp_path, policy + LOOKS_UP_MX, "--queue", "example.com")
    assert_error_at(result, policy + LOOKS_UP_MX, "error('site")
    assert "site (mx1|mx2).example.net hosts mx1.example.net.,mx2.example.net." in result.stderr


def test_validate_config_is_fired(tmp_path):
    policy = INIT + (
        "kumo.on('validate_config', function()\n"
        "  kumo.log_info('validating')\n"
        "end)\n"
        "kumo.on('validate_config', function()\n"
        "  error('the sources file lists no pool')\n"
        "end)\n"
    )
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "the sources file lists no pool")
    assert "validating" in result.stderr
    failed = INIT + "kumo.on('validate_config', function()\n  kumo.validation_failed()\nend)\n"
    result = validate(tmp_path, failed)
    assert_error_at(result, failed, "kumo.validation_failed()")
    assert "called kumo.validation_failed() to report a failure" in result.stderr


# KumoMTA's example policy: the shaping helper's handler looks up MX records (under pcall), then
# the queue helper's calls kumo.validation_failed(). validate used to stop the event at the
# lookup, skip the queue helper's handler and pass a policy that the daemon refuses to start.
LOOKS_UP_THEN_FAILS = """
kumo.on('validate_config', function()
  local ok, err = pcall(kumo.dns.lookup_mx, 'comcast.net')
  print('rollup of comcast.net: ' .. tostring(err))
end)
kumo.on('validate_config', function()
  print('queues.toml is not covered by the config monitor globs')
  kumo.validation_failed()
end)
"""


def test_validate_config_runs_every_handler_when_one_looks_up_dns(tmp_path):
    policy = INIT + LOOKS_UP_THEN_FAILS
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "kumo.validation_failed()")
    assert "rollup of comcast.net: kumo.dns.lookup_mx: DNS is not available" in result.stdout
    assert "queues.toml is not covered" in result.stdout
    assert "needs DNS" not in result.stderr
    unprotected = INIT + (
        "kumo.on('validate_config', function()\n  kumo.dns.lookup_mx('comcast.net')\nend)\n"
    )
    result = validate(tmp_path, unprotected)  # as at the daemon's start: an error at its line
    assert_error_at(result, unprotected, "kumo.dns.lookup_mx('comcast.net')")


def test_paths_are_probed_without_leaving_files(tmp_path):
    existing = tmp_path / "spool"
    existing.mkdir()
    policy = INIT.replace("./var/spool/data", str(existing)).replace(
        "kumo.configure_local_logs",
        "kumo.configure_local_logs { log_dir = './new/a/b' }\n  kumo.configure_local_logs",
    )
    policy += queue_config("protocol = { maildir_path = './var/maildir/{{ meta.tenant }}' }")[
        len(INIT) :
    ]
    result = validate(tmp_path, policy)
    assert result.returncode == 0, result.stderr
    assert "4 spool and log path(s)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.lua", "spool"]
    assert list(existing.iterdir()) == []


def test_an_unwritable_log_dir_and_maildir(tmp_path):
    policy = (
        INIT.replace("'./var/log'", "'/proc/kumoq-validate/log'")
        + queue_config("protocol = { maildir_path = '/proc/kumoq-validate/maildir' }")[len(INIT) :]
    )
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "/proc/kumoq-validate/log")
    assert "maildir_path '/proc/kumoq-validate/maildir': cannot create" in result.stderr
    assert_error_at(result, policy, "get_queue_config")


def test_listeners_on_one_port_or_a_foreign_address(tmp_path):
    policy = INIT.replace(
        "kumo.define_spool { name = 'data'",
        "kumo.start_http_listener { listen = '127.0.0.1:2599' }\n"
        "  kumo.start_esmtp_listener { listen = '127.0.0.1:2599' }\n"
        "  kumo.start_esmtp_listener { listen = '192.0.2.1:25' }\n"
        "  kumo.define_spool { name = 'data'",
    )
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "start_http_listener { listen = '127.0.0.1:2599'")
    assert "listen '127.0.0.1:2599' is the address of a start_esmtp_listener too" in result.stderr
    assert_error_at(result, policy, "192.0.2.1:25")
    assert "is not an address of this host" in result.stderr


def test_a_policy_that_fails_in_init_reports_that_error(tmp_path):
    policy = INIT.replace("name = 'meta',", "name = 'meta', kind = 'Rocks',")
    result = validate(tmp_path, policy)
    assert_error_at(result, policy, "'Rocks'")
    assert result.stdout.strip() == f"{tmp_path / 'init.lua'}: 1 error(s)"


@pytest.mark.parametrize(
    "policy",
    [ROOT / "policy" / "init.lua", *sorted((ROOT / "examples").glob("*.lua"))],
    ids=lambda p: p.name,
)
def test_the_shipped_policy_and_examples_validate_clean(tmp_path, policy):
    result = subprocess.run(
        [sys.executable, "-m", "kumoq", "validate", "--policy", str(policy)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning either
    assert ": OK (" in result.stdout
    assert "checked 7 queue(s)" in result.stdout
    assert list(tmp_path.iterdir()) == []
