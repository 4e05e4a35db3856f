"""kumoq.delivery.smtp's check for a body that needs dot-stuffing: a dot at the start, or
after a CR or LF (docs/security.md). It finds the dots and looks behind each, and past a
few dozen dots searches as before; either way its answer is the plain definition's.
The bytes on the wire are checked against real servers in
tests/integration/test_smtp_client_raw_servers.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kumoq.delivery.smtp import _dot_starts_a_line


def needs_stuffing(data: bytes) -> bool:
    return data[:1] == b"." or b"\n." in data or b"\r." in data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120).map(lambda b: bytes(b".\r\nab."[c % 6] for c in b)))
def test_the_check_answers_as_the_definition(data: bytes) -> None:
    assert _dot_starts_a_line(data) is needs_stuffing(data)


def test_a_line_starting_with_a_dot_after_much_prose() -> None:
    prose = b"One. Two. Three. Four.\r\n" * 10  # more dots than are looked at one by one
    assert not _dot_starts_a_line(prose)
    assert _dot_starts_a_line(prose + b".hidden\r\n")
    assert _dot_starts_a_line(prose + b"bare LF\n.hidden\r\n")
    assert _dot_starts_a_line(b".first")
    assert not _dot_starts_a_line(b"")
    assert not _dot_starts_a_line(b"no dot at all\r\n")
