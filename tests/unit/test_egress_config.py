"""make_egress_pool / make_egress_source / make_egress_path: keys, defaults, errors (§2.3, §2.4)."""

from __future__ import annotations

import ipaddress

import pytest

from kumoq.config.egress import (
    DEFAULT_PROHIBITED_HOSTS,
    UNSPECIFIED_POOL,
    UNSPECIFIED_SOURCE,
    EgressPathConfig,
    EgressPool,
    EgressPoolEntry,
    EgressSource,
    IpLookupStrategy,
    MemoryReductionPolicy,
    ReconnectStrategy,
    SuspendWhen,
    Tls,
    WakeupStrategy,
)
from kumoq.config.queue import RefreshStrategy
from kumoq.config.values import LimitSpec, ThrottleSpec
from kumoq.errors import ConfigError
from kumoq.lua.runtime import EmptyTable


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# --- pools ---------------------------------------------------------------------------------


def test_pool_entries_weights_and_ttl():
    pool = EgressPool.from_mapping(
        {"name": "p", "entries": [{"name": "a"}, {"name": "b", "weight": 3}], "ttl": "5m"}
    )
    assert pool.entries == (EgressPoolEntry("a", 1), EgressPoolEntry("b", 3))
    assert pool.ttl == 300.0


def test_pool_defaults_and_empty_entries():
    assert EgressPool.from_mapping({"name": "p"}) == EgressPool(name="p", entries=(), ttl=60.0)
    empty: object
    for empty in ([], {}, EmptyTable()):
        assert EgressPool.from_mapping({"name": "p", "entries": empty}).entries == ()


def test_pool_weight_zero_allowed_and_lua_float():
    pool = EgressPool.from_mapping({"name": "p", "entries": [{"name": "a", "weight": 0.0}]})
    assert pool.entries[0].weight == 0
    assert isinstance(pool.entries[0].weight, int)


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({}, "missing required key 'name'"),
        ({"name": "p", "bogus": 1}, r"unknown key 'bogus'; allowed keys are: entries, name, ttl"),
        ({"name": "p", "entries": [{"name": "a", "weight": -1}]}, "at least 0, got -1"),
        ({"name": "p", "entries": [{"name": "a", "weight": "x"}]}, "expected an integer, got 'x'"),
        ({"name": "p", "entries": [{"weight": 1}]}, "missing required key 'name'"),
        ({"name": "p", "entries": [{"name": "a", "w": 1}]}, "allowed keys are: name, weight"),
        ({"name": "p", "entries": "a"}, "expected a list of"),
        ({"name": "p", "ttl": "soon"}, "invalid duration 'soon'"),
        ({"name": 3}, "expected a string, got 3"),
    ],
)
def test_pool_errors(mapping, match):
    with pytest.raises(ConfigError, match=match):
        EgressPool.from_mapping(mapping)


def test_unspecified_constants():
    assert UNSPECIFIED_POOL.name == "unspecified"
    assert UNSPECIFIED_POOL.entries == (EgressPoolEntry("unspecified", 1),)
    assert EgressSource(name="unspecified") == UNSPECIFIED_SOURCE
    assert UNSPECIFIED_SOURCE.source_address is None


# --- sources -------------------------------------------------------------------------------


def test_source_core_keys():
    src = EgressSource.from_mapping(
        {
            "name": "ip-1",
            "source_address": "10.0.0.1",
            "ehlo_domain": "mta1.example.com",
            "remote_port": 2525,
            "ttl": "2m",
        }
    )
    assert src == EgressSource(
        name="ip-1",
        source_address="10.0.0.1",
        ehlo_domain="mta1.example.com",
        remote_port=2525,
        ttl=120.0,
    )


def test_source_ipv6_normalised():
    src = EgressSource.from_mapping({"name": "s", "source_address": "2001:DB8::0001"})
    assert src.source_address == "2001:db8::1"


def test_source_later_keys_stored():
    src = EgressSource.from_mapping(
        {
            "name": "s",
            "ha_proxy_server": "10.0.0.9:5000",
            "ha_proxy_source_address": "192.0.2.1",
            "socks5_proxy_server": "10.0.0.8:1080",
            "socks5_proxy_source_address": "192.0.2.2",
            "socks5_proxy_username": "u",
            "socks5_proxy_password": {"key_data": "pw"},
            "suspend_when_unplumbed": {"trigger": "Immediate", "duration": "10m"},
            "suspend_when_proxy_unhealthy": {"trigger": "5/min", "duration": "1h"},
        }
    )
    assert src.ha_proxy_server == "10.0.0.9:5000"
    assert src.ha_proxy_source_address == "192.0.2.1"
    assert src.socks5_proxy_source_address == "192.0.2.2"
    assert src.socks5_proxy_password == {"key_data": "pw"}
    assert src.suspend_when_unplumbed == SuspendWhen(trigger="Immediate", duration=600.0)
    assert src.suspend_when_proxy_unhealthy == SuspendWhen(
        trigger=ThrottleSpec(5, 60), duration=3600.0
    )


def test_suspend_when_threshold_form() -> None:
    """KumoMTA's documented form: ``trigger = { Threshold = '3/1m' }``."""
    src = EgressSource.from_mapping(
        {
            "name": "s",
            "suspend_when_unplumbed": {"trigger": {"Threshold": "3/1m"}, "duration": "5m"},
            "suspend_when_proxy_unhealthy": {"duration": "10m"},
        }
    )
    assert src.suspend_when_unplumbed == SuspendWhen(trigger=ThrottleSpec(3, 60), duration=300.0)
    assert src.suspend_when_proxy_unhealthy == SuspendWhen(trigger="Immediate", duration=600.0)


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"source_address": "10.0.0.1"}, "missing required key 'name'"),
        ({"name": "s", "source_address": "10.0.0.300"}, "invalid IP address '10.0.0.300'"),
        ({"name": "s", "source_address": "mx.example.com"}, "invalid IP address 'mx.example"),
        ({"name": "s", "source_address": 7}, "expected an IP address, got 7"),
        ({"name": "s", "remote_port": 0}, "at least 1, got 0"),
        ({"name": "s", "remote_port": 70000}, "invalid port 70000"),
        ({"name": "s", "bind": "10.0.0.1"}, r"unknown key 'bind'; allowed keys are: .*source_addr"),
        ({"name": "s", "socks5_proxy_source_address": "nope"}, "invalid IP address 'nope'"),
        ({"name": "s", "socks5_proxy_password": {"file": "x"}}, "unknown key 'file'"),
        ({"name": "s", "socks5_proxy_password": 3}, "expected a path or"),
        (
            {"name": "s", "suspend_when_unplumbed": {"trigger": "often", "duration": "1m"}},
            "invalid rate 'often'",
        ),
        ({"name": "s", "suspend_when_unplumbed": {"trigger": "Immediate"}}, "required key 'dur"),
        (
            {"name": "s", "suspend_when_unplumbed": {"trigger": {"Limit": "3/1m"}, "duration": 1}},
            r"expected 'Immediate' or \{ Threshold",
        ),
        (
            {"name": "s", "suspend_when_unplumbed": {"trigger": {"Threshold": "x"}, "duration": 1}},
            "invalid rate 'x'",
        ),
        ({"name": "s", "suspend_when_unplumbed": {"when": 1}}, "allowed keys are: duration"),
    ],
)
def test_source_errors(mapping, match):
    with pytest.raises(ConfigError, match=match):
        EgressSource.from_mapping(mapping)


# --- egress paths --------------------------------------------------------------------------


def test_path_defaults_follow_the_code():
    cfg = EgressPathConfig.from_mapping({})
    assert cfg.connection_limit == LimitSpec(32)
    assert cfg.max_connection_rate is None
    assert cfg.max_message_rate is None
    assert cfg.max_deliveries_per_connection == 1024
    assert cfg.max_ready == 1024
    assert cfg.consecutive_connection_failures_before_delay == 100
    assert cfg.enable_tls is Tls.OPPORTUNISTIC
    assert cfg.smtp_port == 25
    assert cfg.ehlo_domain is None
    assert cfg.prohibited_hosts == (
        net("127.0.0.0/8"),
        net("0.0.0.0/32"),
        net("::1/128"),
        net("::/128"),
    )
    assert cfg.prohibited_hosts == DEFAULT_PROHIBITED_HOSTS
    assert cfg.skip_hosts == ()
    assert (cfg.connect_timeout, cfg.banner_timeout, cfg.auth_timeout) == (60.0, 60.0, 60.0)
    assert (
        cfg.ehlo_timeout,
        cfg.mail_from_timeout,
        cfg.rcpt_to_timeout,
        cfg.data_timeout,
        cfg.data_dot_timeout,
    ) == (300.0,) * 5
    assert (cfg.rset_timeout, cfg.starttls_timeout) == (5.0, 5.0)
    assert cfg.idle_timeout == 5.0  # §10: the code's default, not the docs' 60 s
    assert cfg.lease_duration() == 1690.0
    # NEXT / LATER
    assert cfg.additional_connection_limits == {}
    assert cfg.additional_message_rate_throttles == {}
    assert cfg.max_recipients_per_batch == 100
    assert cfg.reconnect_strategy is ReconnectStrategy.CONNECT_NEXT_HOST
    assert cfg.ip_lookup_strategy is IpLookupStrategy.IPV4_AND_IPV6
    assert cfg.refresh_interval == 60.0
    assert cfg.refresh_strategy is RefreshStrategy.TTL
    assert (cfg.enable_pipelining, cfg.enable_rset) == (True, True)
    assert (cfg.enable_mta_sts, cfg.enable_dane) == (True, False)
    assert cfg.dispatcher_wakeup_strategy is WakeupStrategy.AGGRESSIVE
    assert cfg.system_shutdown_timeout is None
    assert cfg == EgressPathConfig()


def test_path_core_values():
    cfg = EgressPathConfig.from_mapping(
        {
            "connection_limit": "local:20",
            "max_connection_rate": "10/s",
            "max_message_rate": "1,000/h,max_burst=5",
            "max_deliveries_per_connection": 10,
            "max_ready": 80.0,
            "consecutive_connection_failures_before_delay": 0,
            "enable_tls": "Required",
            "smtp_port": 2525,
            "ehlo_domain": "mta.example.com",
            "prohibited_hosts": ["10.0.0.0/8"],
            "skip_hosts": "192.0.2.0/24",
            "idle_timeout": "30s",
            "data_timeout": 10,
        }
    )
    assert cfg.connection_limit == LimitSpec(20, force_local=True)
    assert cfg.max_connection_rate == ThrottleSpec(10, 1)
    assert cfg.max_message_rate == ThrottleSpec(1000, 3600, max_burst=5)
    assert cfg.max_deliveries_per_connection == 10
    assert cfg.max_ready == 80
    assert cfg.consecutive_connection_failures_before_delay == 0
    assert cfg.enable_tls is Tls.REQUIRED
    assert cfg.smtp_port == 2525
    assert cfg.ehlo_domain == "mta.example.com"
    assert cfg.prohibited_hosts == (net("10.0.0.0/8"),)
    assert cfg.skip_hosts == (net("192.0.2.0/24"),)
    assert cfg.idle_timeout == 30.0
    assert cfg.data_timeout == 10.0


@pytest.mark.parametrize("empty", [[], {}, EmptyTable()])
def test_path_empty_lua_tables_for_lists_and_maps(empty):
    cfg = EgressPathConfig.from_mapping(
        {
            "prohibited_hosts": empty,
            "skip_hosts": empty,
            "rustls_cipher_suites": empty,
            "additional_connection_limits": empty,
            "additional_message_rate_throttles": empty,
            "additional_source_selection_rates": empty,
        }
    )
    assert cfg.prohibited_hosts == ()
    assert cfg.skip_hosts == ()
    assert cfg.rustls_cipher_suites == ()
    assert cfg.additional_connection_limits == {}
    assert cfg.additional_message_rate_throttles == {}


def test_path_enable_tls_every_value():
    for value in ("Opportunistic", "OpportunisticInsecure", "Required", "RequiredInsecure"):
        assert EgressPathConfig.from_mapping({"enable_tls": value}).enable_tls == value
    assert EgressPathConfig.from_mapping({"enable_tls": "Disabled"}).enable_tls is Tls.DISABLED


def test_path_next_and_later_keys_stored():
    cfg = EgressPathConfig.from_mapping(
        {
            "additional_connection_limits": {"provider-x": 100, "shared": "local:5"},
            "additional_message_rate_throttles": {"prov": "100/s"},
            "source_selection_rate": "50/s",
            "additional_source_selection_rates": {"x": "1/m"},
            "max_recipients_per_batch": 5,
            "ip_lookup_strategy": "Ipv4Only",
            "reconnect_strategy": "TerminateSession",
            "try_next_host_on_transport_error": True,
            "refresh_interval": "5m",
            "refresh_strategy": "Epoch",
            "enable_pipelining": False,
            "enable_rset": False,
            "smtp_auth_plain_username": "user",
            "smtp_auth_plain_password": "/etc/secret",
            "allow_smtp_auth_plain_without_tls": True,
            "allow_smtp_auth_plain_without_valid_certificate": True,
            "system_shutdown_timeout": "2m",
            "enable_mta_sts": False,
            "enable_dane": True,
            "tls_prefer_openssl": True,
            "tls_certificate": {"key_data": "-----BEGIN"},
            "tls_private_key": "/etc/key.pem",
            "openssl_cipher_list": "HIGH",
            "openssl_cipher_suites": "TLS_AES_256_GCM_SHA384",
            "openssl_options": "NO_TLSV1",
            "rustls_cipher_suites": ["TLS13_AES_256_GCM_SHA384"],
            "remember_broken_tls": "1h",
            "opportunistic_tls_reconnect_on_failed_handshake": True,
            "use_lmtp": True,
            "ignore_8bit_checks": True,
            "provider_name": "gmail",
            "readyq_pool_name": "pool-a",
            "dispatcher_wakeup_strategy": "Relaxed",
            "maintainer_wakeup_strategy": "Relaxed",
            "low_memory_reduction_policy": "ShrinkData",
            "no_memory_reduction_policy": "NoShrink",
            "dispatcher_progress_watchdog_timeout": "10m",
            "aggressive_connection_opening": True,
        }
    )
    assert cfg.additional_connection_limits == {
        "provider-x": LimitSpec(100),
        "shared": LimitSpec(5, force_local=True),
    }
    assert cfg.additional_message_rate_throttles == {"prov": ThrottleSpec(100, 1)}
    assert cfg.source_selection_rate == ThrottleSpec(50, 1)
    assert cfg.additional_source_selection_rates == {"x": ThrottleSpec(1, 60)}
    assert cfg.max_recipients_per_batch == 5
    assert cfg.ip_lookup_strategy is IpLookupStrategy.IPV4_ONLY
    assert cfg.reconnect_strategy is ReconnectStrategy.TERMINATE_SESSION
    assert cfg.try_next_host_on_transport_error is True
    assert cfg.refresh_interval == 300.0
    assert cfg.refresh_strategy is RefreshStrategy.EPOCH
    assert (cfg.enable_pipelining, cfg.enable_rset) == (False, False)
    assert cfg.smtp_auth_plain_username == "user"
    assert cfg.smtp_auth_plain_password == "/etc/secret"
    assert cfg.system_shutdown_timeout == 120.0
    assert cfg.tls_certificate == {"key_data": "-----BEGIN"}
    assert cfg.rustls_cipher_suites == ("TLS13_AES_256_GCM_SHA384",)
    assert cfg.remember_broken_tls == 3600.0
    assert cfg.provider_name == "gmail"
    assert cfg.readyq_pool_name == "pool-a"
    assert cfg.maintainer_wakeup_strategy is WakeupStrategy.RELAXED
    assert cfg.low_memory_reduction_policy is MemoryReductionPolicy.SHRINK_DATA
    assert cfg.no_memory_reduction_policy is MemoryReductionPolicy.NO_SHRINK
    assert cfg.dispatcher_progress_watchdog_timeout == 600.0
    assert cfg.aggressive_connection_opening is True


def test_path_has_no_suspended_key():
    with pytest.raises(ConfigError, match="unknown key 'suspended'"):
        EgressPathConfig.from_mapping({"suspended": True})


def test_path_unknown_key_names_allowed_keys():
    with pytest.raises(ConfigError) as info:
        EgressPathConfig.from_mapping({"connection_limits": 3})
    text = str(info.value)
    assert "make_egress_path: unknown key 'connection_limits'" in text
    for key in ("connection_limit", "idle_timeout", "enable_tls", "max_ready", "skip_hosts"):
        assert key in text


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"connection_limit": 0}, "at least 1, got 0"),
        ({"connection_limit": "lots"}, "invalid limit 'lots'"),
        (
            {"additional_connection_limits": {"x": "many"}},
            r"additional_connection_limits\.x.*'many'",
        ),
        ({"additional_connection_limits": ["a"]}, "expected a table of name = value"),
        ({"max_connection_rate": "10/fortnight"}, "invalid rate '10/fortnight'"),
        ({"max_message_rate": 10}, "expected a rate such as '10/s', got 10"),
        ({"additional_message_rate_throttles": {"p": "x/s"}}, "invalid rate 'x/s'"),
        ({"source_selection_rate": "0/s"}, "invalid rate '0/s'"),
        ({"enable_tls": "Always"}, r"enable_tls: invalid value 'Always'; expected one of"),
        ({"enable_tls": True}, "invalid value True"),
        ({"prohibited_hosts": ["10.0.0.1/8"]}, "invalid CIDR '10.0.0.1/8'"),
        ({"skip_hosts": ["not-an-ip"]}, "invalid CIDR 'not-an-ip'"),
        ({"skip_hosts": 5}, "expected a list of strings, got 5"),
        ({"smtp_port": 0}, "at least 1"),
        ({"smtp_port": 65536}, "invalid port 65536"),
        ({"smtp_port": "25"}, "expected an integer, got '25'"),
        ({"max_ready": 0}, "max_ready: must be at least 1, got 0"),
        ({"max_deliveries_per_connection": 1.5}, "expected an integer, got 1.5"),
        ({"consecutive_connection_failures_before_delay": -1}, "at least 0"),
        ({"idle_timeout": "5 parsecs"}, "invalid duration '5 parsecs'"),
        ({"connect_timeout": -1}, "must not be negative"),
        ({"ehlo_domain": 5}, "expected a string, got 5"),
        ({"enable_pipelining": "yes"}, "expected true or false, got 'yes'"),
        ({"reconnect_strategy": "Retry"}, "invalid value 'Retry'"),
        ({"ip_lookup_strategy": "Ipv5"}, "invalid value 'Ipv5'"),
        ({"refresh_strategy": "Never"}, "invalid value 'Never'"),
        ({"dispatcher_wakeup_strategy": "Lazy"}, "invalid value 'Lazy'"),
        ({"low_memory_reduction_policy": "Shrink"}, "invalid value 'Shrink'"),
        ({"tls_certificate": {"pem": "x"}}, "unknown key 'pem'"),
        ({"tls_certificate": {"key_data": 1}}, "expected string values"),
        ({"rustls_cipher_suites": [1]}, "expected a list of strings"),
    ],
)
def test_path_errors_quote_the_value(mapping, match):
    with pytest.raises(ConfigError, match=match):
        EgressPathConfig.from_mapping(mapping)


def test_path_rejects_non_table():
    with pytest.raises(ConfigError, match="make_egress_path: expected a table"):
        EgressPathConfig.from_mapping("Opportunistic")


@pytest.mark.parametrize("bad", ["evil.example\r\nRSET", "two words", "", "   "])
def test_ehlo_domain_must_be_one_hostname(bad):
    with pytest.raises(ConfigError, match="ehlo_domain: invalid hostname"):
        EgressSource.from_mapping({"name": "s", "ehlo_domain": bad})
    with pytest.raises(ConfigError, match="ehlo_domain: invalid hostname"):
        EgressPathConfig.from_mapping({"ehlo_domain": bad})
    assert EgressSource.from_mapping({"name": "s", "ehlo_domain": " mx.example "}).ehlo_domain == (
        "mx.example"
    )


def test_suspend_when_threshold_from_lua(tmp_path) -> None:
    """The form KumoMTA documents, written in a policy and built by make_egress_source."""
    from kumoq.lua.runtime import PolicyRuntime

    path = tmp_path / "init.lua"
    path.write_text(
        "kumo.on('get_egress_source', function(name)\n"
        "  return kumo.make_egress_source { name = name, source_address = '10.0.0.1',\n"
        "    suspend_when_unplumbed = { trigger = { Threshold = '3/1m' }, duration = '5m' } }\n"
        "end)\n"
    )
    rt = PolicyRuntime(path, builders={"make_egress_source": EgressSource.from_mapping})
    kind, src = rt.invoke_made("get_egress_source", "v", "ip-1")
    assert kind == "make_egress_source"
    assert src.suspend_when_unplumbed == SuspendWhen(trigger=ThrottleSpec(3, 60), duration=300.0)
