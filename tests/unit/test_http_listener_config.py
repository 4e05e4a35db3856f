"""``kumo.start_http_listener{...}``: KumoMTA's keys and defaults in a frozen table."""

from __future__ import annotations

import ipaddress
import platform

import pytest

from kumoq.config.http import HttpListenerConfig
from kumoq.declarations import BUILDERS, Declarations
from kumoq.errors import ConfigError


def test_kumomtas_defaults():
    config = HttpListenerConfig.from_mapping({})
    assert config.listen == "127.0.0.1:8000"
    assert config.address == ("127.0.0.1", 8000)
    assert config.trusted_hosts == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.request_body_limit == 2 * 1024 * 1024
    assert config.use_tls is False
    assert config.hostname == (platform.node() or "localhost")
    assert config.tls_certificate is None
    assert config.tls_private_key is None


def test_every_key():
    config = HttpListenerConfig.from_mapping(
        {
            "listen": "[::1]:0",
            "trusted_hosts": ["10.0.0.0/8", "192.0.2.7"],
            "hostname": "mta.example.com",
            "request_body_limit": "8 MiB",
            "use_tls": True,
            "tls_certificate": "/etc/cert.pem",
            "tls_private_key": "/etc/key.pem",
        }
    )
    assert config.address == ("::1", 0)
    assert config.request_body_limit == 8 * 1024 * 1024
    assert config.trusts("10.1.2.3")
    assert config.trusts("192.0.2.7")
    assert config.trusts("::ffff:10.0.0.1")  # IPv4-mapped counts as IPv4
    assert not config.trusts("192.0.2.8")
    assert not config.trusts("not-an-ip")


def test_the_table_is_frozen():
    config = HttpListenerConfig.from_mapping({})
    with pytest.raises(AttributeError):
        config.listen = "0.0.0.0:80"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mapping", "text"),
    [
        (
            {"port": 80},
            "unknown key 'port'; allowed keys are: hostname, listen, request_body_limit",
        ),
        ({"listen": "8000"}, "listen: invalid listen address"),
        ({"trusted_hosts": ["10.0.0.1/8"]}, "trusted_hosts: invalid CIDR"),
        ({"request_body_limit": 0}, "request_body_limit: size must be positive"),
        ({"use_tls": "yes"}, "use_tls: expected true or false"),
        (
            {"use_tls": True, "tls_certificate": "/c"},
            "tls_certificate is set but tls_private_key is not",
        ),
        (
            {"use_tls": True, "tls_certificate": "/c", "tls_private_key": {"vault_path": "k"}},
            "tls_private_key must be a PEM file path",
        ),
    ],
)
def test_bad_values_name_the_key(mapping, text):
    with pytest.raises(ConfigError, match=text):
        HttpListenerConfig.from_mapping(mapping)


def test_use_tls_without_a_certificate_means_a_self_signed_one():
    config = HttpListenerConfig.from_mapping({"use_tls": True})
    assert (config.use_tls, config.tls_certificate, config.tls_private_key) == (True, None, None)


def test_a_vault_key_source_is_stored_when_tls_is_off():
    config = HttpListenerConfig.from_mapping({"tls_certificate": {"vault_path": "x"}})
    assert config.tls_certificate == {"vault_path": "x"}


def test_the_builder_declares_several_listeners():
    declarations = Declarations()
    for listen in ("127.0.0.1:0", "127.0.0.1:1"):
        built = BUILDERS["start_http_listener"]({"listen": listen})
        declarations.declare("start_http_listener", built)
    assert [c.listen for c in declarations.http_listeners] == ["127.0.0.1:0", "127.0.0.1:1"]
    other = Declarations()
    other.declare("start_http_listener", BUILDERS["start_http_listener"]({"listen": "127.0.0.1:0"}))
    assert declarations.restart_only_changes(other) == ["HTTP listeners"]
