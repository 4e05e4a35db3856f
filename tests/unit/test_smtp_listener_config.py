"""Tests of EsmtpListenerConfig (kumoq.config.listener): defaults, values and errors."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kumoq.config.listener import (
    BatchHandling,
    EsmtpListenerConfig,
    InvalidLineEndings,
    TraceHeaders,
)
from kumoq.errors import ConfigError


# --- EsmtpListenerConfig -------------------------------------------------------------------------
def test_config_defaults() -> None:
    cfg = EsmtpListenerConfig.from_mapping({})
    assert cfg.listen == "127.0.0.1:2025"
    assert cfg.address == ("127.0.0.1", 2025)
    assert cfg.hostname
    assert cfg.banner == "KumoMTA"
    assert cfg.relay_hosts == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert cfg.max_message_size == 20 * 1024 * 1024
    assert cfg.max_recipients_per_message == 1024
    assert cfg.max_messages_per_connection == 10_000
    assert cfg.client_timeout == 60.0
    assert cfg.data_processing_timeout == 300.0
    assert cfg.trace_headers == TraceHeaders()
    assert cfg.trace_headers.header_name == "X-KumoRef"
    assert cfg.deferred_spool is False
    assert cfg.invalid_line_endings is InvalidLineEndings.DENY
    assert cfg.line_length_hard_limit == 998
    assert cfg.max_connections == 32768
    assert cfg.batch_handling is BatchHandling.BIFURCATE_ALWAYS
    assert cfg.meta == {}


def test_config_values() -> None:
    cfg = EsmtpListenerConfig.from_mapping(
        {
            "listen": "[::1]:0",
            "hostname": "mx.example.com",
            "relay_hosts": ["10.0.0.0/8", "192.168.1.1"],
            "max_message_size": "1 MiB",
            "client_timeout": "10 seconds",
            "data_processing_timeout": 30,
            "trace_headers": {"received_header": False, "include_meta_names": {}},
            "invalid_line_endings": "Fix",
            "batch_handling": "BatchByDomain",
            "tls_certificate": "/etc/cert.pem",
            "tls_private_key": {"key_data": "..."},
            "meta": {"tenant": "t1"},
            "peer": {"10.0.0.0/8": {"banner": "x"}},
            "via": {},
            "max_connections": 10.0,
        }
    )
    assert cfg.address == ("::1", 0)
    assert cfg.max_message_size == 1024 * 1024
    assert cfg.client_timeout == 10.0
    assert cfg.trace_headers == TraceHeaders(received_header=False)
    assert cfg.invalid_line_endings is InvalidLineEndings.FIX
    assert cfg.batch_handling is BatchHandling.BATCH_BY_DOMAIN
    assert cfg.tls_private_key == {"key_data": "..."}
    assert cfg.meta == {"tenant": "t1"}
    assert cfg.peer == {"10.0.0.0/8": {"banner": "x"}}
    assert cfg.max_connections == 10
    assert cfg.relay_allowed("10.1.2.3")
    assert cfg.relay_allowed("192.168.1.1")
    assert not cfg.relay_allowed("127.0.0.1")
    assert cfg.relay_allowed("::ffff:10.0.0.1")
    assert not cfg.relay_allowed("not an ip")
    assert EsmtpListenerConfig.from_mapping({"listen": "localhost:25"}).address == ("localhost", 25)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"lisen": "x"}, "unknown key 'lisen'; allowed keys are: .*listen"),
        ({"listen": "127.0.0.1"}, "'127.0.0.1'"),
        ({"listen": "::1:25"}, "'::1:25'"),
        ({"listen": "[::1:25"}, "'\\[::1:25'"),
        ({"listen": "[nothost]:25"}, "nothost"),
        ({"listen": "127.0.0.1:99999"}, "99999"),
        ({"listen": 25}, "25"),
        ({"relay_hosts": ["10.0.0.1/8"]}, "10.0.0.1/8"),
        ({"max_message_size": "lots"}, "'lots'"),
        ({"max_message_size": 0}, "0"),
        ({"max_recipients_per_message": 0}, "at least 1"),
        ({"client_timeout": "soon"}, "'soon'"),
        ({"client_timeout": 0}, "positive"),
        ({"invalid_line_endings": "Maybe"}, "'Maybe'.*'Deny', 'Allow', 'Fix'"),
        ({"batch_handling": "Never"}, "'Never'"),
        (
            {"trace_headers": {"recieved_header": True}},
            "trace_headers: unknown key 'recieved_header'",
        ),
        ({"trace_headers": {"include_meta_names": [1]}}, "\\[1\\]"),
        ({"deferred_spool": "yes"}, "'yes'"),
        ({"hostname": "two words"}, "'two words'"),
        ({"meta": ["x"]}, "\\['x'\\]"),
        ({"tls_certificate": 5}, "5"),
    ],
)
def test_config_errors(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EsmtpListenerConfig.from_mapping(mapping)
