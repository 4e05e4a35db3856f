"""The what-if scenario format: every key parsed, every mistake named (kumoq.simulate.scenario)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kumoq.errors import ConfigError
from kumoq.simulate.scenario import (
    DEFAULT_TEMPFAIL_REPLY,
    Behaviour,
    Scenario,
    load_scenario,
)

FULL = """
policy = "relay.lua"
duration = "2 days"
bucket = "30 minutes"
seed = 3
message_received = false

[[campaign]]
name = "spring"
tenant = "acme"
messages = 1_000
rate = "500/h"
start = "1h"
size = "10 KB"
sender = "news@acme.example"
domains = { "gmail.com" = 3, "other.example" = 1 }
headers = { "X-Tenant" = "acme" }
meta = { priority = 2 }

[defaults]
latency = "200ms"
command_latency = "10ms"
tempfail = 0.01
max_connections = 30

[domain."gmail.com"]
also = ["googlemail.com"]
mx = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
addresses = ["192.0.2.10"]
tempfail = 0.05
permfail = 0.01
max_messages_per_connection = 100
tempfail_reply = "450 4.2.1 slow down"

[[domain."gmail.com".window]]
from = "2h"
until = "4h"
refuse = "421 4.7.0 try later"

[[domain."gmail.com".window]]
from = "1h"
until = "90m"
unreachable = true
"""


def parse(text: str, base: Path | None = None) -> Scenario:
    return Scenario.from_mapping(tomllib.loads(text), base)


def test_every_key_is_parsed():
    scenario = parse(FULL, Path("/etc/kumoq"))
    assert scenario.policy == Path("/etc/kumoq/relay.lua")
    assert (scenario.duration, scenario.bucket, scenario.seed) == (172800.0, 1800.0, 3)
    assert scenario.message_received is False
    (campaign,) = scenario.campaigns
    assert campaign.name == "spring"
    assert campaign.tenant == "acme"
    assert campaign.messages == 1000 == scenario.messages
    assert campaign.rate == pytest.approx(500 / 3600)
    assert (campaign.start, campaign.size) == (3600.0, 10_000)
    assert campaign.domains == (("gmail.com", 3), ("other.example", 1))
    assert campaign.headers == (("X-Tenant", "acme"),)
    assert campaign.meta == {"priority": 2}

    gmail, other = scenario.destinations
    assert gmail.domains == ("gmail.com", "googlemail.com")
    assert gmail.mx == ("gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com")
    assert gmail.addresses == ("192.0.2.10",)
    assert gmail.behaviour == Behaviour(
        latency=0.2, command_latency=0.01, tempfail=0.05, permfail=0.01, max_connections=30,
        max_messages_per_connection=100, tempfail_reply="450 4.2.1 slow down",
    )  # fmt: skip
    # Windows are sorted by start; each is the domain's behaviour with its own keys over it.
    early, late = gmail.windows
    assert (early.start, early.end, early.behaviour.unreachable) == (3600.0, 5400.0, True)
    assert (late.start, late.end, late.behaviour.refuse) == (7200.0, 14400.0, "421 4.7.0 try later")
    assert late.behaviour.tempfail == 0.05
    assert gmail.at(0) is gmail.behaviour
    assert gmail.at(3600).unreachable
    assert gmail.at(7199).refuse is None
    assert gmail.at(7200).refuse == "421 4.7.0 try later"
    assert gmail.at(14400) is gmail.behaviour
    # A campaign domain with no table of its own answers with the defaults.
    assert other.name == "other.example"
    assert other.mx == ("mx.other.example",)
    assert other.behaviour == Behaviour(
        latency=0.2, command_latency=0.01, tempfail=0.01, max_connections=30
    )
    assert other.behaviour.tempfail_reply == DEFAULT_TEMPFAIL_REPLY


def test_the_smallest_scenario_has_defaults():
    scenario = parse('duration = "1h"\n[[campaign]]\nmessages = 5\ndomains = { "a.example" = 1 }')
    assert scenario.bucket == 3600.0
    assert scenario.message_received is True
    assert scenario.policy is None
    (campaign,) = scenario.campaigns
    assert campaign.rate is None  # all at once
    assert campaign.name is None
    assert campaign.tenant is None
    (destination,) = scenario.destinations
    assert destination.behaviour == Behaviour()


MINIMAL = '[[campaign]]\nmessages = 5\ndomains = { "a.example" = 1 }\n'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('duration = "1h"\nfoo = 1\n' + MINIMAL, "unknown key 'foo'; allowed: bucket, campaign"),
        (MINIMAL, "'duration' and at least one [[campaign]] are required"),
        ('duration = "soon"\n' + MINIMAL, "scenario.duration: invalid duration 'soon'"),
        ('duration = 0\n' + MINIMAL, "'duration' and 'bucket' must be above zero"),
        ('duration = "1h"\n[[campaign]]\nmessages = 0\ndomains = { "a.example" = 1 }',
         "campaign[0].messages: expected a whole number >= 1"),
        ('duration = "1h"\n[[campaign]]\nmessages = 5\ndomains = { "a.example" = 0 }',
         "at least one domain needs a weight above 0"),
        ('duration = "1h"\n[[campaign]]\nmessages = 5\nrate = "fast"\ndomains = { "a" = 1 }',
         "campaign[0].rate: invalid rate 'fast'"),
        ('duration = "1h"\n[[campaign]]\nmessages = 5\nsender = "nobody"\ndomains = { "a" = 1 }',
         "campaign[0].sender: invalid address 'nobody'"),
        ('duration = "1h"\n[[campaign]]\nmessages = 5\nlimit = 3\ndomains = { "a" = 1 }',
         "campaign[0]: unknown key 'limit'"),
        ('duration = "1h"\n' + MINIMAL + '[defaults]\ntempfail = 5\n',
         "defaults.tempfail: expected a share from 0 to 1"),
        ('duration = "1h"\n' + MINIMAL + '[defaults]\ntempfail = 0.6\npermfail = 0.6\n',
         "defaults: tempfail + permfail must not exceed 1"),
        ('duration = "1h"\n' + MINIMAL + '[defaults]\nalso = ["b"]\n',
         "defaults: unknown key 'also'"),
        ('duration = "1h"\n' + MINIMAL + '[domain."a.example"]\nrefuse = "250 ok"\n',
         "domain.'a.example'.refuse: expected a reply such as '451 4.7.1 text' with a 4xx/5xx"),
        ('duration = "1h"\n' + MINIMAL + '[domain."a.example"]\npermfail_reply = "451 x"\n',
         "permfail_reply: expected a reply such as '551 4.7.1 text' with a 5xx code"),
        ('duration = "1h"\n' + MINIMAL + '[domain."a.example"]\nmax_connections = 0\n',
         "max_connections: expected a whole number >= 1"),
        ('duration = "1h"\n' + MINIMAL + '[[domain."a.example".window]]\nfrom = "2h"\n'
         'until = "1h"\n', "domain.'a.example'.window[0]: 'until' must come after 'from'"),
        ('duration = "1h"\n' + MINIMAL + '[[domain."a.example".window]]\nuntil = "1h"\n',
         "'from' and 'until' are required"),
        ('duration = "1h"\n' + MINIMAL + '[[domain."a.example".window]]\nfrom = 0\n'
         'until = "1h"\nmx = "x"\n', "window[0]: unknown key 'mx'"),
        ('duration = "1h"\n' + MINIMAL + '[domain."a.example"]\n[domain."b.example"]\n'
         'also = ["a.example"]\n', "domain 'a.example' is answered by both"),
        ('duration = "1h"\nstart_time = 2026-03-02T09:00:00\n' + MINIMAL,
         "scenario.start_time: expected a date and time with its offset"),
    ],
)  # fmt: skip
def test_mistakes_are_named(text: str, error: str):
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert error in str(caught.value)


def test_load_scenario_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('duration = "1h"\n[[campaign]]\nmessages = "many"\ndomains = {a = 1}\n')
    with pytest.raises(ConfigError, match=r"scenario .*bad\.toml: campaign\[0\]\.messages"):
        load_scenario(path)
    path.write_text("duration = \n")
    with pytest.raises(ConfigError, match=r"scenario .*bad\.toml: "):
        load_scenario(path)
    with pytest.raises(ConfigError, match="cannot read the scenario"):
        load_scenario(tmp_path / "missing.toml")
    path.write_text(MINIMAL.replace("[[campaign]]", 'duration = "1h"\npolicy = "p.lua"\n'
                                    "[[campaign]]"))  # fmt: skip
    assert load_scenario(path).policy == tmp_path / "p.lua"


def test_the_scenario_in_the_docs_parses():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    section = doc.split("## What-if simulator", 1)[1]
    (block,) = re.findall(r"^```toml\n(.*?)^```$", section, re.M | re.S)
    scenario = parse(block)
    assert scenario.messages == 100_000
    assert scenario.start_time == 1_772_442_000.0  # 2026-03-02T09:00:00Z
    assert {d.name for d in scenario.destinations} == {
        "gmail.com", "yahoo.com", "outlook.com", "example.org",
    }  # fmt: skip
