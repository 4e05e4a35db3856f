"""kumoq.config.shaping: shaping files checked and merged with KumoMTA's precedence
(default < site < domain < site source < domain source), replace_base, mx_rollup and the
errors that name the file, the domain and the key. Pure: no Lua, no DNS (sites are given)."""

from __future__ import annotations

from typing import Any

import pytest

from kumoq.config.shaping import (
    CheckLevel,
    DnsFailure,
    ShapingOptions,
    merge,
    parse_file,
    rollup_domains,
)
from kumoq.errors import ConfigError

SITE = "(mx1|mx2).example.net"

BASE: dict[str, Any] = {
    "default": {"connection_limit": 10, "max_message_rate": "100/s", "enable_tls": "Opportunistic"},
    "rolled.test": {"connection_limit": 20, "sources": {"ip-1": {"connection_limit": 2}}},
    "flat.test": {
        "mx_rollup": False,
        "connection_limit": 3,
        "sources": {"ip-1": {"connection_limit": 1}},
    },
}


def shaping(*files: dict[str, Any], sites: dict[str, Any] | None = None, **options: Any) -> Any:
    parsed = [parse_file(f"f{i}.toml", data) for i, data in enumerate(files)]
    answers = {"rolled.test": SITE, **(sites or {})}
    return merge(parsed, answers, ShapingOptions.from_mapping(options or None))


def test_precedence_default_site_domain_source() -> None:
    s = shaping(BASE)
    assert s.get_egress_path_config("nowhere.test", "ip-1", "mx.nowhere.test") == {
        "connection_limit": 10,
        "max_message_rate": "100/s",
        "enable_tls": "Opportunistic",
    }
    # rolled.test is keyed by its site: any domain on that site gets it
    assert s.get_egress_path_config("vanity.test", "ip-2", SITE)["connection_limit"] == 20
    assert s.get_egress_path_config("rolled.test", "ip-2", "other-site")["connection_limit"] == 10
    assert s.get_egress_path_config("vanity.test", "ip-1", SITE)["connection_limit"] == 2
    # mx_rollup = false: keyed by the domain itself, whatever the site
    flat = s.get_egress_path_config("flat.test", "ip-2", SITE)
    assert flat["connection_limit"] == 3
    assert s.get_egress_path_config("flat.test", "ip-1", SITE)["connection_limit"] == 1
    assert "mx_rollup" not in flat
    assert "sources" not in flat


def test_domain_beats_site_and_domain_source_beats_site_source() -> None:
    data = {
        "rolled.test": {"connection_limit": 20, "sources": {"ip-1": {"connection_limit": 2}}},
        "flat.test": {
            "mx_rollup": False,
            "connection_limit": 3,
            "max_deliveries_per_connection": 7,
            "sources": {"ip-1": {"max_deliveries_per_connection": 9}},
        },
    }
    s = shaping(data)
    got = s.get_egress_path_config("flat.test", "ip-1", SITE)
    assert got["connection_limit"] == 2  # the site's source override comes after the domain
    assert got["max_deliveries_per_connection"] == 9
    assert s.get_egress_path_config("flat.test", "ip-2", SITE)["connection_limit"] == 3


def test_files_merge_in_order_key_by_key() -> None:
    later = {"flat.test": {"mx_rollup": False, "max_message_rate": "5/m"}}
    s = shaping(BASE, later)
    got = s.get_egress_path_config("flat.test", "ip-2", "x")
    assert got == {
        "connection_limit": 3,
        "max_message_rate": "5/m",
        "enable_tls": "Opportunistic",
    }
    assert shaping(later, BASE).get_egress_path_config("flat.test", "x", "x")[
        "max_message_rate"
    ] == ("5/m")


def test_additional_throttle_tables_merge_their_keys() -> None:
    a = {"default": {"additional_connection_limits": {"a": 5}, "skip_hosts": ["10.0.0.0/8"]}}
    b = {
        "default": {"additional_connection_limits": {"b": 6}, "skip_hosts": ["10.1.0.0/16"]},
    }
    got = shaping(a, b).get_egress_path_config("d.test", "s", "x")
    assert got["additional_connection_limits"] == {"a": 5, "b": 6}
    assert got["skip_hosts"] == ["10.1.0.0/16"]  # other values replace


def test_replace_base_discards_earlier_files_for_that_entry() -> None:
    later = {"flat.test": {"mx_rollup": False, "replace_base": True, "smtp_port": 2525}}
    got = shaping(BASE, later).get_egress_path_config("flat.test", "ip-1", "x")
    # the earlier flat.test (and its sources) is gone; default still applies
    assert got == {
        "connection_limit": 10,
        "max_message_rate": "100/s",
        "enable_tls": "Opportunistic",
        "smtp_port": 2525,
    }


def test_replace_base_on_the_first_entry_also_sets_aside_default() -> None:
    # as in KumoMTA: the merged entry keeps the first file's replace_base, applied at lookup
    only = {"solo.test": {"mx_rollup": False, "replace_base": True, "smtp_port": 2525}}
    assert shaping(BASE, only).get_egress_path_config("solo.test", "s", "x") == {"smtp_port": 2525}


def test_rollup_domains_and_dns_answers() -> None:
    files = [parse_file("a.toml", BASE), parse_file("b.json", {"other.test": {}})]
    assert rollup_domains(files) == ["rolled.test", "other.test"]
    sites: dict[str, str | DnsFailure] = {"rolled.test": "", "other.test": DnsFailure("NXDOMAIN")}
    quiet = merge(files, sites, ShapingOptions())
    assert quiet.warnings == ()
    assert quiet.errors == ()
    assert dict(quiet.by_site) == {}
    loud = merge(files, sites, ShapingOptions(null_mx=CheckLevel.WARN, dns_fail=CheckLevel.ERROR))
    assert loud.warnings == (
        "domain rolled.test has a NULL MX and cannot be used with mx_rollup=true. "
        "Ignoring the shaping config for that domain.",
    )
    assert loud.errors == (
        "error resolving MX for other.test: NXDOMAIN. Ignoring the shaping config for that domain.",
    )


def test_aliased_sites_are_reported_at_their_level() -> None:
    files = [parse_file("a.toml", {"one.test": {}, "two.test": {}})]
    sites = {"one.test": SITE, "two.test": SITE}
    s = merge(files, sites, ShapingOptions(aliased_site=CheckLevel.WARN))
    expected = f"multiple domain blocks alias to the same site: {SITE}: one.test, two.test"
    assert s.warnings == (expected,)


def test_unread_files_are_reported_at_their_level() -> None:
    s = merge([(CheckLevel.ERROR, "cannot read x.toml")], {}, ShapingOptions())
    assert s.errors == ("cannot read x.toml",)
    assert merge([(CheckLevel.IGNORE, "x")], {}, ShapingOptions()).errors == ()


def test_automation_and_providers_are_ignored_with_a_warning() -> None:
    data = {
        "yahoo.test": {
            "mx_rollup": False,
            "max_deliveries_per_connection": 20,
            "automation": [{"regex": "TS04", "action": "Suspend", "duration": "2h"}],
        },
        "provider": {"big": {"match": [{"MXSuffix": ".big.test"}]}},
    }
    f = parse_file("s.toml", data)
    assert f.warnings == [
        "s.toml: domain 'yahoo.test': ignoring 1 automation rule(s): kumoq has no Traffic "
        "Shaping Automation",
        "s.toml: ignoring provider block(s) big: kumoq does not match providers",
    ]
    got = merge([f], {}, ShapingOptions()).get_egress_path_config("yahoo.test", "s", "x")
    assert got == {"max_deliveries_per_connection": 20}
    with pytest.raises(ConfigError, match=r"s.toml: domain 'y.test': automation: expected a list"):
        parse_file("s.toml", {"y.test": {"automation": "Suspend"}})


def test_a_single_label_domain_is_a_warning() -> None:
    assert "single DNS label" in parse_file("s.toml", {"gmail": {}}).warnings[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"d.test": {"conection_limit": 3}},
            "f.toml: domain 'd.test': unknown key 'conection_limit' (not a make_egress_path key)",
        ),
        ({"d.test": {"connection_limit": "lots"}}, "f.toml: domain 'd.test': connection_limit"),
        (
            {"d.test": {"sources": {"ip-1": {"max_message_rate": "fast"}}}},
            "f.toml: domain 'd.test': source 'ip-1': max_message_rate",
        ),
        ({"default": {"enable_tls": "Always"}}, "f.toml: domain 'default': enable_tls"),
        ({"d.test": {"mx_rollup": "no"}}, "f.toml: domain 'd.test': mx_rollup: expected true"),
        ({"d.test": {"replace_base": 1}}, "f.toml: domain 'd.test': replace_base"),
        ({"d.test": 5}, "f.toml: domain 'd.test': expected a table"),
        ({"d.test": {"sources": []}}, "f.toml: domain 'd.test': sources: expected a table"),
    ],
)
def test_errors_name_the_file_the_domain_and_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_file("f.toml", data)
    assert str(info.value).startswith(message)


def test_options_are_checked() -> None:
    assert ShapingOptions.from_mapping({"dns_fail": "warn"}).dns_fail is CheckLevel.WARN
    with pytest.raises(ConfigError, match="options: unknown key 'dnsfail'"):
        ShapingOptions.from_mapping({"dnsfail": "Warn"})
    with pytest.raises(ConfigError, match=r"options\.null_mx: expected one of"):
        ShapingOptions.from_mapping({"null_mx": "Loud"})


def test_referenced_sources_and_a_stable_hash() -> None:
    s = shaping(BASE)
    assert s.referenced_sources() == {"ip-1": [f"site:{SITE}", "domain:flat.test"]}
    assert s.hash == shaping(BASE).hash
    assert s.hash != shaping(BASE, {"flat.test": {"mx_rollup": False, "smtp_port": 26}}).hash
