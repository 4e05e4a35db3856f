"""Tests of the Reply value and the named replies of kumoq.smtp.replies."""

from __future__ import annotations

import pytest

from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply


# --- Reply ---------------------------------------------------------------------------------------
def test_reply_rendering() -> None:
    assert Reply(250, "2.0.0", "OK").to_bytes() == b"250 2.0.0 OK\r\n"
    assert Reply(354, None, "go").to_bytes() == b"354 go\r\n"
    assert Reply(250, None, "").to_bytes() == b"250\r\n"
    assert Reply(550, "5.7.1", "one\ntwo\r\nthree").to_bytes() == (
        b"550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three\r\n"
    )
    assert Reply(250, None, "a\nb").to_bytes() == b"250-a\r\n250 b\r\n"
    assert Reply(250, None, "ünïcode").to_bytes() == "250 ünïcode\r\n".encode()
    assert str(Reply(451, "4.4.5", "x")) == "451 4.4.5 x"
    assert Reply(250, "2.0.0", "x") == Reply(250, "2.0.0", "x")


@pytest.mark.parametrize(
    ("code", "enhanced"), [(199, None), (600, None), (550, "4.0.0"), (250, "2.0")]
)
def test_reply_validation(code: int, enhanced: str | None) -> None:
    with pytest.raises(ValueError, match=r"reply code|enhanced"):
        Reply(code, enhanced, "x")


def test_reply_from_text() -> None:
    assert Reply.from_text(550, "5.7.1 go away") == Reply(550, "5.7.1", "go away")
    assert Reply.from_text(550, "go away") == Reply(550, None, "go away")
    assert Reply.from_text(450, "5.7.1 wrong class") == Reply(450, None, "5.7.1 wrong class")
    assert Reply.from_text(421, "4.3.2") == Reply(421, "4.3.2", "")
    reply = Reply(451, "4.3.0", "x")
    assert reply.is_transient
    assert not reply.is_positive
    assert not reply.is_permanent


def test_named_replies() -> None:
    assert R.spool_not_ready("h").to_bytes() == (
        b"421 4.3.2 h waiting for spool startup. Try again soon!\r\n"
    )
    assert R.technical_difficulties("h").to_bytes() == b"421 4.3.0 h technical difficulties\r\n"
    assert R.relaying_denied("10.0.0.1:1234").to_bytes() == (
        b"550 5.7.1 relaying not permitted for 10.0.0.1:1234\r\n"
    )
    assert R.TOO_MANY_RECIPIENTS.to_bytes() == b"452 4.5.3 too many recipients\r\n"


# --- KumoMTA's texts -----------------------------------------------------------------------------
def test_kumomta_texts() -> None:
    assert R.address_ok(True, "s@example.com") == b"250 2.1.0 OK <s@example.com>\r\n"
    assert R.address_ok(True, "") == b"250 2.1.0 OK <>\r\n"
    assert R.address_ok(False, "rü@example.com") == "250 2.1.5 OK <rü@example.com>\r\n".encode()
    assert str(R.ehlo_reply("mx", "client", False, ())) == "250 Hello client!"
    assert str(R.ehlo_reply("mx", "client", True, ("PIPELINING",))) == (
        "250-mx Aloha client\r\n250 PIPELINING"
    )
    assert str(R.command_error((500, "5.5.2"), "x")) == "502 5.5.1 Command unimplemented"
    assert str(R.command_error((501, "5.5.4"), "bad")) == "501 5.5.4 bad"
    assert str(R.disconnecting_after_error("mx")) == (
        "421 4.3.0 mx disconnecting due to previous error"
    )
    assert str(R.RESET_OK) == "250 2.0.0 Reset state"
    assert str(R.NOOP_OK) == "250 2.0.0 the goggles do nothing"
    assert str(R.CLOSING) == "221 2.0.0 So long, and thanks for all the fish!"
