"""kumo.serde (JSON, TOML, YAML) and the legacy kumo.json_* and kumo.toml_* names."""

from __future__ import annotations

import json
import tomllib

import pytest
import yaml

from kumoq.errors import PolicyError
from tests.unit.lua_kumo_support import call, load


def test_legacy_names_are_the_serde_functions(tmp_path):
    names = [
        "json_load",
        "json_parse",
        "json_encode",
        "json_encode_pretty",
        "toml_load",
        "toml_parse",
        "toml_encode",
        "toml_encode_pretty",
    ]
    body = "\n".join(f"assert(kumo.{n} == kumo.serde.{n}, '{n}')" for n in names)
    load(tmp_path, body + "\nassert(not pcall(function() return kumo.yaml_load end))\n")


def test_json_accepts_comments_outside_strings(tmp_path):
    text = """{
      // a line comment
      "a": 1, # a shell comment
      /* a block
         comment */ "b": "// not a comment # nor this",
      "c": [1, 2.5, true, null]
    }"""
    got = call(tmp_path, "return kumo.serde.json_parse(...)", text)
    assert got == {"a": 1, "b": "// not a comment # nor this", "c": [1, 2.5, True]}


def test_json_load_reads_a_file_with_comments(tmp_path):
    (tmp_path / "data.json").write_text('{"x": /* one */ 1}\n')
    got = call(tmp_path, "return kumo.json_load(...)", str(tmp_path / "data.json"))
    assert got == {"x": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "kumo.serde.json_parse('{\\n\"a\": 1,\\n}')",
            "json_parse: invalid JSON: .* at line 3 column 1",
        ),
        ("kumo.serde.json_parse('[NaN]')", "json_parse: invalid JSON: NaN is not a JSON number"),
        ("kumo.serde.toml_parse('a = 1\\nb = ')", "toml_parse: invalid TOML: "),
        (
            "kumo.serde.yaml_parse('a: [1, 2\\nb: 3')",
            "(?s)yaml_parse: invalid YAML: .*line 2, column 2",
        ),
        ("kumo.serde.toml_load(42)", "toml_load: expected a string, got number"),
        ("kumo.serde.toml_encode({1, 2})", "toml_encode: only a table with string keys is TOML"),
        ("kumo.serde.json_encode({f = print})", "json_encode: cannot convert a Lua function"),
    ],
)
def test_errors_name_the_function_and_the_policy_line(tmp_path, body, message):
    with pytest.raises(PolicyError, match=message) as info:
        call(tmp_path, f"local x = 1\n{body}")
    assert info.value.location == "init.lua:3"


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("toml_load", 'a = 1\n[b]\nc = "x"\nd = \n', "line 4"),
        ("json_load", '{\n  "a": 1\n  "b": 2\n}\n', "line 3 column 3"),
        ("yaml_load", "a: 1\nb: [1\nc: 2\n", "line 3"),
    ],
)
def test_a_bad_file_is_named_with_the_line(tmp_path, name, text, where):
    path = tmp_path / f"bad.{name[:4]}"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        call(tmp_path, f"return kumo.serde.{name}(...)", str(path))
    message = str(info.value)
    assert f"{name}: parsing {path} as {name[:4]}" in message
    assert where in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(PolicyError, match=r"toml_load: reading file /nonexistent/x.toml: No such"):
        call(tmp_path, "return kumo.toml_load '/nonexistent/x.toml'")


def test_toml_round_trip_and_dates(tmp_path):
    (tmp_path / "q.toml").write_text(
        "default_tenant = 'x'\nwhen = 1979-05-27T07:32:00Z\n"
        "[queue.'gmail.com']\nmax_age = '22 hours'\nports = [25, 587]\n"
    )
    got = call(
        tmp_path,
        "local t = kumo.toml_load(...) return { t = t, text = kumo.toml_encode(t) }",
        str(tmp_path / "q.toml"),
    )
    assert got["t"] == {
        "default_tenant": "x",
        "when": "1979-05-27T07:32:00Z",
        "queue": {"gmail.com": {"max_age": "22 hours", "ports": [25, 587]}},
    }
    assert tomllib.loads(got["text"]) == got["t"]


def test_toml_encode_pretty_writes_multi_line_strings(tmp_path):
    text = call(tmp_path, "return kumo.serde.toml_encode_pretty { s = 'a\\nb', n = 1 }")
    assert text == 'n = 1\ns = """\na\nb"""\n'


def test_yaml_uses_the_core_schema(tmp_path):
    text = "country: NO\nenabled: true\nport: 025\nratio: 1:20\nday: 2001-12-14\nnone: ~\n"
    got = call(tmp_path, "return kumo.serde.yaml_parse(...)", text)
    assert got == {
        "country": "NO",
        "enabled": True,
        "port": 25,
        "ratio": "1:20",
        "day": "2001-12-14",
    }


def test_yaml_encode_and_load(tmp_path):
    text = call(tmp_path, "return kumo.serde.yaml_encode { b = { 1, 2 }, a = 'yes' }")
    assert yaml.safe_load(text) == {"a": "yes", "b": [1, 2]}
    (tmp_path / "d.yaml").write_text(text)
    assert call(tmp_path, "return kumo.serde.yaml_load(...)", str(tmp_path / "d.yaml")) == {
        "a": "yes",
        "b": [1, 2],
    }


def test_json_encode_pretty_sorts_keys(tmp_path):
    text = call(tmp_path, "return kumo.serde.json_encode_pretty { b = 1, a = { 1 } }")
    assert text == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert json.loads(text) == {"a": [1], "b": 1}
