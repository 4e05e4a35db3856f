"""kumo.string and kumo.regex, each function as KumoMTA documents it (Rust's semantics)."""

from __future__ import annotations

import pytest

from kumoq.errors import PolicyError
from tests.unit.lua_kumo_support import call, load


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("kumo.string.replace('this is old', 'old', 'new')", "this is new"),
        ("kumo.string.replacen('foo foo 123 foo', 'foo', 'new', 2)", "new new 123 foo"),
        ("kumo.string.replacen('foo foo', 'foo', 'new', 0)", "foo foo"),
        (
            "kumo.string.split('Mary had a little lamb', ' ')",
            ["Mary", "had", "a", "little", "lamb"],
        ),
        ("kumo.string.splitn('Mary had a little lamb', 3, ' ')", ["Mary", "had", "a little lamb"]),
        (
            "kumo.string.rsplit('Mary had a little lamb', ' ')",
            ["lamb", "little", "a", "had", "Mary"],
        ),
        ("kumo.string.rsplitn('Mary had a little lamb', 3, ' ')", ["lamb", "little", "Mary had a"]),
        ("kumo.string.split('abc', '')", ["", "a", "b", "c", ""]),
        ("kumo.string.rsplit('a,b,', ',')", ["", "b", "a"]),
        (
            "kumo.string.split_whitespace(' Mary \\u{a0}had\\ta  lamb\\n')",
            ["Mary", "had", "a", "lamb"],
        ),
        ("kumo.string.split_ascii_whitespace('a\\u{a0}b c')", ["a\u00a0b", "c"]),
        ("kumo.string.trim '\\n Hello\\tworld\\t\\n'", "Hello\tworld"),
        ("kumo.string.trim_end '\\n Hello\\tworld\\t\\n'", "\n Hello\tworld"),
        ("kumo.string.trim_start '\\n Hello\\tworld\\t\\n'", "Hello\tworld\t\n"),
        ("kumo.string.trim '\\u{2003}x\\u{3000}'", "x"),
        ("kumo.string.starts_with('hello world', 'hello')", True),
        ("kumo.string.starts_with('hello', 'hello world')", False),
        ("kumo.string.ends_with('hello world', 'world')", True),
        ("kumo.string.ends_with('hello', '')", True),
        ("kumo.string.wrap 'hello'", "hello"),
        ("kumo.string.wrap(string.rep('A', 200), 75, 100)", "A" * 100 + "\r\n\t" + "A" * 100),
        (
            "kumo.string.wrap(string.rep('hello there ', 10), 75, 100)",
            "hello there hello there hello there hello there hello there hello there\r\n"
            "\thello there hello there hello there hello there",
        ),
        ("kumo.string.eval_template('example.json', '{{name}}', { name = 'John' })", '"John"'),
        ("kumo.string.eval_template('t.txt', '{{a}}-{{b}}-{{c}}', { a = true })", "true--"),
        ("kumo.string.eval_template('t.html', '{{a}}', { a = '<b>' })", "&lt;b&gt;"),
        ("kumo.string.eval_template('t.txt', '{{a}}', {}, 'Static')", "{{a}}"),
        ("kumo.string.replace(12345, 3, 'x')", "12x45"),
    ],
)
def test_string_functions(tmp_path, expr, expected):
    assert call(tmp_path, f"return {expr}") == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "kumo.string.split(nil, ' ')",
            r"kumo.string.split: bad argument #1 \(string expected, got nil\)",
        ),
        ("kumo.string.splitn('a', -1, ' ')", "kumo.string.splitn: splitn: expected a count"),
        (
            "kumo.string.splitn('a', 1.5, ' ')",
            r"kumo.string.splitn: bad argument #2 \(integer expected\)",
        ),
        ("kumo.string.trim('\\xff')", "kumo.string.trim: argument #1 is not valid UTF-8"),
        (
            "kumo.string.eval_template('t', '{{', {})",
            "kumo.string.eval_template: eval_template: t:",
        ),
        ("kumo.string.eval_template('t', 'x', {}, 'Handlebars')", "'Handlebars' template dialect"),
    ],
)
def test_string_errors_name_the_function_at_the_policy_line(tmp_path, expr, message):
    with pytest.raises(PolicyError, match=message) as info:
        call(tmp_path, f"local x = 1\nlocal r = {expr}")
    assert info.value.location == "init.lua:3"


# -- regex ---------------------------------------------------------------------------------------


def test_the_documented_regex_examples(tmp_path):
    load(
        tmp_path,
        r"""
        local re = kumo.regex.compile "'([^']+)'\\s+\\((\\d{4})\\)"
        local cap = re:captures "Not my favorite movie: 'Citizen Kane' (1941)."
        assert(cap[0] == "'Citizen Kane' (1941)")
        assert(cap[1] == 'Citizen Kane')
        assert(cap[2] == '1941')

        re = kumo.regex.compile "'(?<title>[^']+)'\\s+\\((?<year>\\d{4})\\)"
        cap = re:captures "Not my favorite movie: 'Citizen Kane' (1941)."
        assert(cap.title == 'Citizen Kane' and cap.year == '1941')
        assert(re:captures 'nothing here' == nil)

        assert(kumo.regex.compile('oo'):is_match 'foo')
        assert(not kumo.regex.compile('^oo'):is_match 'foo')
        re = kumo.regex.compile 'o+'
        assert(re:find 'food' == 'oo')
        assert(re:find 'fooood' == 'oooo')
        assert(re:find 'bar' == nil)

        re = kumo.regex.compile '\\b\\w{13}\\b'
        local res =
          re:find_all 'Retroactively relinquishing remunerations is reprehensible.'
        assert(
          kumo.json_encode(res)
            == '["Retroactively","relinquishing","remunerations","reprehensible"]'
        )

        re = kumo.regex.compile '[^01]+'
        assert(re:replace('1078910', '') == '1010')
        re = kumo.regex.compile '(?P<last>[^,\\s]+),\\s+(?P<first>\\S+)'
        assert(re:replace('Springsteen, Bruce', '$first $last') == 'Bruce Springsteen')

        re = kumo.regex.compile '[ \\t]+'
        res = re:split 'a b \t  c\td    e'
        assert(kumo.json_encode(res) == '["a","b","c","d","e"]')
        """,
    )


@pytest.mark.parametrize(
    ("pattern", "method", "args", "expected"),
    [
        ("a", "replace_all", ("banana", "o"), "bonono"),
        ("a", "replacen", ("banana", 2, "o"), "bonona"),
        ("a", "replacen", ("banana", 0, "o"), "bonono"),
        ("(a)(n)", "replace", ("banana", "$2$1"), "bnaana"),
        ("(a)(n)", "replace", ("banana", "$1a|${1}a|$$|$9|$name"), "b|aa|$||ana"),
        ("x", "split", ("axbx",), ["a", "b", ""]),
        ("(x)", "split", ("axb",), ["a", "b"]),
        (r"\p{Lu}+", "find_all", ("abcDEfG",), ["DE", "G"]),
        ("[[:digit:]]+", "find", ("ab12c",), "12"),
        ("^(?!.*KumoMTA internal).*RL000010", "is_match", ("451 RL000010 busy",), True),
        ("^(?!.*KumoMTA internal).*RL000010", "is_match", ("KumoMTA internal RL000010",), False),
        ("(?<a>x)?y", "captures", ("y",), {"0": "y"}),
    ],
)
def test_regex_methods(tmp_path, pattern, method, args, expected):
    got = call(
        tmp_path,
        f"local re = kumo.regex.compile(...) return re:{method}(select(2, ...))",
        pattern,
        *args,
    )
    assert got == expected


def test_regex_escape_is_rust_regex_escape(tmp_path):
    got = call(tmp_path, "return kumo.regex.escape 'a.b*c (d)|e#f-g~h&i'")
    assert got == r"a\.b\*c \(d\)\|e\#f\-g\~h\&i"
    assert call(tmp_path, "return kumo.regex.compile(kumo.regex.escape '1+1=2'):is_match 'x1+1=2'")


def test_regex_errors(tmp_path):
    with pytest.raises(PolicyError, match=r"^init.lua:3: regex.compile: invalid pattern '\(x'"):
        call(tmp_path, "local x = 1\nkumo.regex.compile '(x'")
    with pytest.raises(PolicyError, match=r"^init.lua:2: regex:find: call it as a method"):
        call(tmp_path, "local re = kumo.regex.compile 'x' local r = re.find('x')")
    assert call(tmp_path, "return tostring(kumo.regex.compile 'a+')") == "Regex(a+)"
