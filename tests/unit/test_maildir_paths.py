"""Values expanded into ``maildir_path`` never leave the template's root (issue 10, defect 6).

A header value such as ``../../../tmp/x`` copied into the meta and expanded by
``maildir_path = '/root/{{ meta.tenant }}'`` wrote a maildir outside ``/root``. Now each
``{{ ... }}`` prints its value encoded as a piece of one path component: ``%`` -> ``%25``,
``/`` -> ``%2F``, NUL -> ``%00`` and a leading ``.`` -> ``%2E``. The template's literal text
is kept as written.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import urllib.parse
from pathlib import Path

import pytest

from kumoq.config.queue import MaildirProtocol
from kumoq.delivery.maildir import MaildirDeliverer, MaildirResult
from kumoq.delivery.template import (
    MaildirPathTemplates,
    TemplateExpansionError,
    encode_path_value,
    message_context,
)
from kumoq.message import EnvelopeAddress, Message, new_spool_id

HOSTILE = [
    "../x",
    "..",
    ".",
    "/etc",
    "/",
    "a/../../b",
    "\0",
    "a\0b",
    "../outside/escaped",  # tmp_path/outside: a failure stays in tmp_path
    "..\\..\\windows",
    "./.",
    "...",
    ".hidden",
    " ..",
    ".. ",
    "%2E%2E%2F",
    "%2e.",
    "%",
    "%%2F",
    "x" * 300,
    "../" * 100 + "etc",
    "é/../ü",
    "日本語/..",
    "\u2215..\u2215",  # DIVISION SLASH: not a separator
    "\uff0e\uff0e",  # FULLWIDTH FULL STOP: not a dot
    "a\nb",
    "~root",
    "$HOME",
    "",
    "\udcff../",  # a non-UTF-8 byte, as headers decode them (surrogateescape)
]

TEMPLATES = [
    "/root/{{ v }}",
    "/root/{{ v }}/{{ v }}",
    "/root/t-{{ v }}",
    "/root/{{ v }}-t",
    "/root/{{ v }}{{ v }}",
    "/root/{{ v }}.{{ v }}",
    "/root/.{{ v }}",
    "/root/{{ v ~ '/' ~ v }}",
    "/root/{{ v|lower }}/{{ v|trim }}",
    "/root/{% if v %}{{ v }}{% else %}none{% endif %}",
]

RCPT = EnvelopeAddress.parse("user@example.com")


def expand(source: str, **context: object) -> str:
    return MaildirPathTemplates().expand(source, dict(context), RCPT)


def contained(path: str, source: str) -> None:
    """``path`` stays below /root, with the template's own number of components."""
    assert "\0" not in path
    parts = path.split("/")
    assert parts[:2] == ["", "root"], path
    assert ".." not in parts, path
    normal = posixpath.normpath(path)
    assert normal == "/root" or normal.startswith("/root/"), path
    literal_slashes = source.count("/") - source.count("'/'")
    assert path.count("/") == literal_slashes, (source, path)


@pytest.mark.parametrize("source", TEMPLATES)
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:40])
def test_a_hostile_value_stays_in_its_component(value: str, source: str) -> None:
    contained(expand(source, v=value), source)


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:40])
def test_the_encoding_is_reversible(value: str) -> None:
    encoded = encode_path_value(value)
    assert "/" not in encoded
    assert "\0" not in encoded
    assert not encoded.startswith(".")
    assert urllib.parse.unquote(encoded, errors="surrogateescape") == value


def test_distinct_values_get_distinct_directories() -> None:
    values = [*HOSTILE, "a/b", "a%2Fb", "a%252Fb", ".x", "%2Ex", "x"]
    encoded = [expand("/root/{{ v }}", v=v) for v in values]
    assert len(set(encoded)) == len(set(values))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("acme", "acme"),
        ("example.com", "example.com"),
        ("a b", "a b"),
        ("tenant-1_x", "tenant-1_x"),
        ("..", "%2E."),
        ("../x", "%2E.%2Fx"),
        ("/etc", "%2Fetc"),
        ("a\0b", "a%00b"),
        ("50%", "50%25"),
        (".hidden", "%2Ehidden"),
        ("x.", "x."),
        ("ünï", "ünï"),
    ],
)
def test_what_the_encoding_does(value: str, expected: str) -> None:
    assert encode_path_value(value) == expected
    assert expand("/root/{{ v }}", v=value) == f"/root/{expected}"


def test_values_still_print_as_minijinja_prints_them() -> None:
    assert expand("/r/{{ a }}/{{ b }}/{{ c }}/{{ d }}", a=None, b=True, c=False, d=7) == (
        "/r/none/true/false/7"
    )


def test_literal_template_text_is_the_operators_and_stays_as_written() -> None:
    assert expand("/root/../other/{{ v }}", v="x") == "/root/../other/x"
    assert expand("./var/maildir/{{ v }}/new", v="..") == "./var/maildir/%2E./new"
    assert expand("/plain/path") == "/plain/path"


def test_string_constants_and_blocks_are_values_too() -> None:
    assert expand("/root/{{ '../x' }}") == "/root/%2E.%2Fx"
    assert expand("/root/{% set x %}..{% endset %}{{ x }}") == "/root/%2E."
    assert expand("/root/{{ v|join('/') }}", v=["..", ".."]) == "/root/%2E.%2F.."


def test_a_filter_block_that_rebuilds_dot_dot_is_refused() -> None:
    with pytest.raises(TemplateExpansionError, match=r"'\.\.' component"):
        expand("/root/{% filter trim %}{{ v }}{% endfilter %}/x", v=" ..")


def test_a_very_long_value_fails_the_write_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    msg = message_with(tenant="x" * 300)
    result = deliver(msg, f"{root}/{{{{ meta.tenant }}}}")
    assert not result.ok
    assert "File name too long" in (result.failure_content or "")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# -- the real maildir writer ---------------------------------------------------------------


def message_with(**meta: object) -> Message:
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("s@example.com"),
        recipients=[RCPT],
        meta=dict(meta),
        data=b"Subject: hi\r\n\r\nbody\r\n",
    )


def deliver(msg: Message, source: str) -> MaildirResult:
    async def run() -> MaildirResult:
        writer = MaildirDeliverer(hostname="mx.test", fsync_threads=0)
        try:
            return await writer.deliver(msg, MaildirProtocol(maildir_path=source))
        finally:
            await writer.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "value", [v for v in HOSTILE if v and len(v) < 200], ids=lambda v: repr(v)[:40]
)
def test_the_writer_puts_a_hostile_value_inside_the_root(tmp_path: Path, value: str) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    msg = message_with(tenant=value)
    context = message_context(msg)
    assert context["meta"]["tenant"] == value
    result = deliver(msg, f"{root}/{{{{ meta.tenant }}}}/{{{{ domain }}}}")
    assert result.ok, result.failure_content
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1
    (written,) = files
    assert written.is_relative_to(root)
    assert written.parent.name == "new"
    tenant_dir = written.parents[2]
    assert tenant_dir.parent == root
    decoded = urllib.parse.unquote(os.fsdecode(tenant_dir.name), errors="surrogateescape")
    assert decoded == value
    assert list(outside.iterdir()) == []
