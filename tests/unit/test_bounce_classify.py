"""The bounce classifier: KumoMTA's rules format, first-rule-wins matching, the two caches, errors
that name the file and the rule, and the policy's ``kumo.configure_bounce_classifier``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq.clock import FakeClock
from kumoq.config.logs import LocalLogsConfig
from kumoq.declarations import load_policy
from kumoq.errors import ConfigError, PolicyError
from kumoq.logs.classify import (
    CLASSIFIABLE,
    BounceClassifier,
    ClassifierParams,
    _anchored,
    build_classifier,
    parse_rules,
)
from kumoq.logs.logger import RecordLogger
from kumoq.logs.records import RecordType, Response
from kumoq.logs.writer import LocalLogWriter
from kumoq.message import EnvelopeAddress, Message, new_spool_id

RULES_TOML = r"""
# a test rules file (kumoq's own, not KumoMTA's iana.toml)
[rules]
InvalidRecipient = [
  "^(451|550) [45]\\.1\\.[1234] ",
  "no such user",
]
QuotaIssues = ["^552 [45]\\.2\\.2 "]
InvalidRecipientToo = ["no such"]  # never wins over the earlier rule above
"""

PARAMS = ClassifierParams(files=("rules.toml",))


def classifier(*files: tuple[str, str], **params: int) -> BounceClassifier:
    p = ClassifierParams(files=tuple(f for f, _ in files), **params)
    return BounceClassifier.compile(list(files), p)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("550 5.1.1 mailbox unknown", "InvalidRecipient"),
        ("451 4.1.2 try later", "InvalidRecipient"),
        ("552 5.2.2 mailbox is stuffed", "QuotaIssues"),
        ("352 5.2.2 mailbox is stuffed", "Uncategorized"),  # anchored at the code
        ("554 sorry, no such user here", "InvalidRecipient"),  # unanchored: anywhere
        ("250 ok", "Uncategorized"),
    ],
)
def test_rules_match_the_single_line(line, expected):
    assert classifier(("rules.toml", RULES_TOML)).classify_str(line) == expected


def test_the_first_rule_in_file_order_wins_across_classes_and_files():
    # KumoMTA's own rule-order case: foo before bar within a file, then the second file.
    first = '[rules]\nfoo = ["woot", "aaa"]\nbar = ["woot", "aaa", "bbb"]\n'
    second = '{"rules": {"second_file": ["bbb", "ccc"]}}'
    c = classifier(("a.toml", first), ("b.json", second))
    assert [c.classify_str(s) for s in ("woot", "aaa", "bbb", "ccc", "ddd")] == [
        "foo",
        "foo",
        "bar",
        "second_file",
        "Uncategorized",
    ]
    # The lowest rule wins even when a later rule matches earlier in the line.
    assert c.classify_str("bbb woot") == "foo"


def test_a_response_is_classified_by_code_enhanced_code_and_content():
    c = classifier(("rules.toml", RULES_TOML))
    assert c.classify(Response.from_reply(550, "5.1.1 unknown user")) == "InvalidRecipient"
    assert c.classify(Response(552, (5, 2, 2), "full")) == "QuotaIssues"
    # without an enhanced code the line is "<code> <content>"
    assert c.classify(Response(552, None, "5.2.2 full")) == "QuotaIssues"
    assert c.classify(Response(552, None, "full")) == "Uncategorized"


def test_results_are_cached_in_two_lru_caches():
    c = classifier(("rules.toml", RULES_TOML), cache_size=2, uncategorized_cache_size=1)
    c.classify_str("550 5.1.1 a")
    c.classify_str("550 5.1.1 b")
    c.classify_str("250 x")
    c.classify_str("250 y")  # evicts "250 x" from the uncategorized cache only
    assert c.cache_len() == (2, 1)
    c.classify_str("550 5.1.1 a")  # a hit: now the most recently used
    c.classify_str("552 5.2.2 c")  # evicts "b", the least recently used
    assert list(c._cache) == ["550 5.1.1 a", "552 5.2.2 c"]
    assert c.classify_str("550 5.1.1 a") == "InvalidRecipient"


def test_a_cache_size_of_zero_caches_nothing():
    c = classifier(("rules.toml", RULES_TOML), cache_size=0, uncategorized_cache_size=0)
    assert c.classify_str("550 5.1.1 a") == "InvalidRecipient"
    assert c.classify_str("250 ok") == "Uncategorized"
    assert c.cache_len() == (0, 0)


def test_parse_rules_keeps_file_order_and_ignores_other_keys():
    text = json.dumps({"comment": "x", "rules": {"B": ["b1", "b2"], "A": ["a1"]}})
    assert parse_rules("r.json", text) == [("B", "b1"), ("B", "b2"), ("A", "a1")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.toml", "[rules\n", "decoding r.toml as a bounce classifier file"),
        ("r.json", "{", "decoding r.json as a bounce classifier file"),
        ("r.toml", "x = 1\n", "r.toml: expected a 'rules' table"),
        ("r.toml", '[rules]\nA = "one"\n', "r.toml: rules.A: expected a list of regexes"),
        ("r.toml", "[rules]\nA = [1]\n", "r.toml: rules.A[0]: expected a regex string"),
        ("r.yaml", "", "r.yaml: classifier files must have either .toml or .json"),
    ],
)
def test_rules_file_errors_name_the_file(name, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_rules(name, text)


def test_a_bad_regex_names_the_file_the_class_and_the_rule():
    text = '[rules]\nA = ["ok"]\nB = ["fine", "(unclosed"]\n'
    with pytest.raises(ConfigError) as info:
        classifier(("good.toml", RULES_TOML), ("bad.toml", text))
    assert str(info.value).startswith("bad.toml: rules.B[1] '(unclosed': invalid regex: ")


def test_build_classifier_reads_through_the_given_reader():
    files = {"a.toml": RULES_TOML}
    c = build_classifier(ClassifierParams(files=("a.toml",)), read=files.__getitem__)
    assert len(c) == 4

    def missing(name: str) -> str:
        raise FileNotFoundError(2, "No such file or directory", name)

    with pytest.raises(ConfigError, match=r"reading file: gone\.toml: No such file"):
        build_classifier(ClassifierParams(files=("gone.toml",)), read=missing)
    with pytest.raises(ConfigError, match=r"x\.txt: classifier files must have"):
        build_classifier(ClassifierParams(files=("x.txt",)), read=files.__getitem__)


def test_params_from_mapping():
    p = ClassifierParams.from_mapping({"files": ["a.toml"], "cache_size": 10, "pool_size": 2})
    assert p == ClassifierParams(files=("a.toml",), cache_size=10)
    assert ClassifierParams.from_mapping({"files": {}}).files == ()  # an empty Lua table
    with pytest.raises(ConfigError, match=r"unknown key.*fils.*allowed: back_pressure"):
        ClassifierParams.from_mapping({"fils": ["a.toml"]})
    with pytest.raises(ConfigError, match="files must be a list of file names"):
        ClassifierParams.from_mapping({"files": "a.toml"})
    with pytest.raises(ConfigError, match="cache_size must be an integer >= 0"):
        ClassifierParams.from_mapping({"files": [], "cache_size": -1})


def test_classifiable_record_types_are_kumomtas():
    assert RecordType.Bounce in CLASSIFIABLE
    assert RecordType.Rejection in CLASSIFIABLE
    assert RecordType.Delivery not in CLASSIFIABLE
    assert RecordType.Delayed not in CLASSIFIABLE


POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{tmp}/data' }}
  kumo.define_spool {{ name = 'meta', path = '{tmp}/meta' }}
  kumo.configure_bounce_classifier {{ files = {{ {files} }}, cache_size = 16 }}
end)
"""


def test_the_policy_declares_a_classifier(tmp_path: Path):
    (tmp_path / "rules.toml").write_text(RULES_TOML)
    policy = tmp_path / "init.lua"
    policy.write_text(POLICY.format(tmp=tmp_path, files=f"'{tmp_path}/rules.toml'"))
    _, _, decl = load_policy(policy)
    assert decl.bounce_classifier is not None
    assert decl.bounce_classifier.params.cache_size == 16
    assert decl.bounce_classifier.classify_str("550 5.1.1 x") == "InvalidRecipient"
    # A reload compares the call and the files' texts: a change waits for a restart.
    assert decl.restart_only_changes(load_policy(policy)[2]) == []
    (tmp_path / "rules.toml").write_text(RULES_TOML + 'Other = ["x"]\n')
    assert decl.restart_only_changes(load_policy(policy)[2]) == ["the bounce classifier"]


def test_a_bad_rules_file_fails_init_at_the_policy_line(tmp_path: Path):
    (tmp_path / "bad.toml").write_text('[rules]\nA = ["(x"]\n')
    policy = tmp_path / "init.lua"
    policy.write_text(POLICY.format(tmp=tmp_path, files=f"'{tmp_path}/bad.toml'"))
    with pytest.raises(PolicyError) as info:
        load_policy(policy)
    text = str(info.value)
    assert "init.lua:6:" in text
    assert f"{tmp_path}/bad.toml: rules.A[0] '(x': invalid regex" in text


class _Writer:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, line: bytes) -> None:
        self.lines.append(json.loads(line))


def _message() -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[EnvelopeAddress.parse("r@example.com")],
        meta={},
        data=b"Subject: x\r\n\r\nx\r\n",
        created=1_700_000_000.0,
    )


@pytest.mark.parametrize("configured", [True, False])
def test_the_logger_classifies_only_classifiable_records(configured: bool):
    writer = _Writer()
    config = LocalLogsConfig.from_mapping({"log_dir": "/nonexistent"})
    c = classifier(("rules.toml", RULES_TOML)) if configured else None
    logger = RecordLogger(
        [(cast(LocalLogWriter, writer), config)], "node", FakeClock(1_700_000_001.0), c
    )
    refused = Response(550, (5, 1, 1), "no such user", "RCPT TO")
    for kind in (RecordType.Bounce, RecordType.TransientFailure, RecordType.Delivery):
        logger.log(kind, _message(), response=refused)
    logger.log_rejection({}, "RCPT TO", refused)
    got = [(r["type"], r["bounce_classification"]) for r in writer.lines]
    label = "InvalidRecipient" if configured else "Uncategorized"
    assert got == [
        ("Bounce", label),
        ("TransientFailure", label),
        ("Delivery", "Uncategorized"),
        ("Rejection", label),
    ]


@pytest.mark.parametrize(
    ("pattern", "anchored"),
    [
        ("^550 ", True),
        ("^(451|550) [45]\\.1\\.[1234] ", True),
        ("^a[|]b", True),
        ("^a[]|]b", True),
        ("^a\\|b", True),
        ("^a|b", False),  # b matches anywhere
        ("a", False),
        ("^a(?i:x)", False),  # inline flags: treated as unanchored
    ],
)
def test_anchored_rules_are_recognized(pattern, anchored):
    assert _anchored(pattern) is anchored


def test_rules_that_cannot_be_combined_are_tried_one_by_one():
    c = classifier(("r.toml", '[rules]\nEcho = ["(x)\\\\1"]\nOther = ["(?i)^Y"]\n'))
    assert c._anchored_match is None
    assert len(c._unanchored) == 2
    assert [c.classify_str(s) for s in ("xx", "x", "y z", "z")] == [
        "Echo",
        "Uncategorized",
        "Other",
        "Uncategorized",
    ]


_ATOMS = [
    "^550 ",
    "^55[02] ",
    "5\\.1\\.1",
    "^4",
    "user",
    "^5\\d\\d 5\\.2",
    "full|quota",
    "x$",
    "^(?P<n>55)0",  # a named group: twice is a compile error, then the rules go one by one
    "^(4|5)\\d+ .*user$",
]


@given(
    rules=st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=8),
    line=st.text(alphabet="0123456789 .5xuserfulquota", max_size=20),
)
def test_the_combined_match_agrees_with_trying_each_rule_in_order(rules, line):
    text = "[rules]\n" + "".join(f"C{i} = [{json.dumps(r)}]\n" for i, r in enumerate(rules))
    c = classifier(("r.toml", text), cache_size=0, uncategorized_cache_size=0)
    naive = next((f"C{i}" for i, r in enumerate(rules) if re.search(r, line)), "Uncategorized")
    assert c.classify_str(line) == naive
