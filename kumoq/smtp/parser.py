"""The RFC 5321 command grammar: ``parse_command(line) -> Command``.

Each grammar rule is a regular expression below, with the RFC text it implements quoted above
it (h11's ``_abnf.py`` style). RFC 6531 (SMTPUTF8) widens atext, qtextSMTP and sub-domain with
UTF-8; a path that uses them is only accepted when the transaction announced ``SMTPUTF8``.

Deliberate leniencies: verbs are case-insensitive, and spaces between ``FROM:``/``TO:`` and the
path, and between ESMTP parameters, are tolerated. Angle brackets are required.

RFC 5321 §4.5.3.1's size limits apply: a domain of at most 255 octets (in a path and in
EHLO) and a whole path (``<`` to ``>``, source route included) of at most 256, as sendmail's
MAXNAME. Its 64-octet local part is deliberately not enforced (§4.5.3.1 asks servers to impose
no limits where they can): real mail exceeds it (Mailman's confirmation addresses, GitHub's
``reply+<token>@`` addresses, aiosmtpd #257), and the path limit bounds it at 252 anyway.

``STARTTLS`` takes no argument; ``AUTH``'s ``argument`` is the text after the verb, read by
``smtp/auth.py``. ``BDAT`` (RFC 3030, not offered) is parsed only so that the session can skip
its chunk: its ``argument`` is the chunk size in digits, or empty when the line gives none that
is valid.

Errors raise ``RemoteProtocolError`` whose ``reply_hint`` is the (code, enhanced code) to send:
(500, 5.5.2) unknown command, (502, 5.5.1) known but not implemented, (501, 5.5.4) bad
arguments, (501, 5.1.7) bad or over-long sender, (501, 5.1.3) bad or over-long recipient,
(553, 5.6.7) non-ASCII address without SMTPUTF8, (555, 5.5.4) unknown MAIL/RCPT parameter.

Pure: imports kumoq.errors and kumoq.message only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, NamedTuple, final

from kumoq.errors import RemoteProtocolError
from kumoq.message import NULL_SENDER, EnvelopeAddress

__all__ = ["Command", "EsmtpParams", "parse_command", "parse_path"]

# RFC 5321 §4.1.2
#   Let-dig = ALPHA / DIGIT ; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
#   sub-domain = Let-dig [Ldh-str] ; Domain = sub-domain *("." sub-domain)
# RFC 6531 §3.3: sub-domain =/ U-label
_LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
_SUB_DOMAIN = rf"{_LET_DIG}(?:[A-Za-z0-9\-\u0080-\U0010ffff]*{_LET_DIG})?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
#   address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
#                           General-address-literal ) "]"
#   General-address-literal = Standardized-tag ":" 1*dcontent
#   dcontent = %d33-90 / %d94-126   ; Printable US-ASCII excl. "[", "\", "]"
_ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
#   atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" / "=" /
#           "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"      (RFC 5322 §3.2.3)
#   Atom = 1*atext ; Dot-string = Atom *("."  Atom)
# RFC 6531 §3.3: atext =/ UTF8-non-ascii
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
#   Quoted-string = DQUOTE *QcontentSMTP DQUOTE
#   QcontentSMTP = qtextSMTP / quoted-pairSMTP
#   quoted-pairSMTP = %d92 %d32-126 ; qtextSMTP = %d32-33 / %d35-91 / %d93-126
# RFC 6531 §3.3: qtextSMTP =/ UTF8-non-ascii
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
#   Mailbox = Local-part "@" ( Domain / address-literal )
#   Local-part = Dot-string / Quoted-string
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})"
#   Path = "<" [ A-d-l ":" ] Mailbox ">"
#   A-d-l = At-domain *( "," At-domain ) ; At-domain = "@" Domain
_PATH = re.compile(rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?{_MAILBOX}>")
#   esmtp-param = esmtp-keyword ["=" esmtp-value]
#   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#   esmtp-value = 1*(%d33-60 / %d62-126) ; RFC 6531 §3.3: esmtp-value =/ UTF8-non-ascii
_ESMTP_PARAM = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?"
)
_IPV4_LITERAL = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# The common case, ASCII ``<dot-string@domain>`` after ``FROM:``/``TO:``, checked by one match;
# anything else takes the general path (which also words the errors).
_ASCII_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ASCII_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(
    rf" *<({_ASCII_ATOM}(?:\.{_ASCII_ATOM})*)@({_ASCII_SUB_DOMAIN}(?:\.{_ASCII_SUB_DOMAIN})*)>"
    r"(?: ([\x20-\x7e]*))?"
)

# RFC 3030: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF
#   chunk-size = 1*DIGIT ; end-marker = "LAST"
_BDAT = re.compile(r"([0-9]{1,20})(?: LAST)?", re.IGNORECASE)
# RFC 5321 §4.5.3.1.2-3, in octets.
MAX_DOMAIN: Final = 255
MAX_PATH: Final = 256

_NO_ARGS: Final = frozenset({"DATA", "RSET", "QUIT", "STARTTLS"})
_FREE_ARGS: Final = frozenset({"NOOP", "HELP", "VRFY"})
_UNIMPLEMENTED: Final = frozenset(
    {"EXPN", "ETRN", "TURN", "ATRN", "LHLO", "XCLIENT", "SEND", "SOML", "SAML"}
)  # fmt: skip
_BODY_VALUES: Final = frozenset({"7BIT", "8BITMIME"})

_E_UNKNOWN: Final = (500, "5.5.2")
_E_UNIMPLEMENTED: Final = (502, "5.5.1")
_E_ARGS: Final = (501, "5.5.4")
_E_SENDER: Final = (501, "5.1.7")
_E_RECIPIENT: Final = (501, "5.1.3")
_E_NON_ASCII: Final = (553, "5.6.7")
_E_PARAM_UNKNOWN: Final = (555, "5.5.4")


@final
@dataclass(frozen=True, slots=True)
class EsmtpParams:
    """The MAIL FROM parameters kumoq understands (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531)."""

    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False


NO_PARAMS: Final = EsmtpParams()


class Command(NamedTuple):
    """One parsed command line (a NamedTuple: built once per command, so it must be cheap).

    ``verb`` is upper case. ``argument`` is the EHLO/HELO domain or the free text after
    NOOP/HELP/VRFY; ``address`` and ``params`` are set for MAIL and RCPT.
    """

    verb: str
    argument: str = ""
    address: EnvelopeAddress | None = None
    params: EsmtpParams = NO_PARAMS


def _fail(message: str, hint: tuple[int, str]) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply_hint=hint)


def parse_command(line: bytes, *, smtputf8: bool = False) -> Command:
    """Parse one command line (without its CRLF).

    ``smtputf8`` says whether the current transaction announced SMTPUTF8, which allows UTF-8
    in the RCPT TO path (MAIL FROM carries its own ``SMTPUTF8`` parameter). O(len(line)).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raw_verb = line.split(b" ", 1)[0].upper()
        if raw_verb == b"BDAT":
            return Command("BDAT")  # no valid chunk size
        if raw_verb.isascii() and raw_verb.decode("ascii") in _KNOWN_VERBS:
            raise _fail("Syntax error: invalid UTF-8 in arguments", _E_ARGS) from None
        raise _fail("Syntax error: command unrecognized", _E_UNKNOWN) from None
    head = text[:10].upper()
    if head == "MAIL FROM:":
        m = _SIMPLE_PATH.fullmatch(text, 10)
        if m is not None and _short(m[1], m[2]):
            params = NO_PARAMS if m[3] is None else _parse_mail_params(m[3])
            return Command("MAIL", "", EnvelopeAddress(m[1], m[2]), params)
    elif head[:8] == "RCPT TO:":
        m = _SIMPLE_PATH.fullmatch(text, 8)
        if m is not None and m[3] is None and _short(m[1], m[2]):
            return Command("RCPT", "", EnvelopeAddress(m[1], m[2]), NO_PARAMS)
    verb, _, rest = text.partition(" ")
    verb = verb.upper()
    if verb == "MAIL":
        return _parse_mail(rest)
    if verb == "RCPT":
        return _parse_rcpt(rest, smtputf8)
    if verb in _NO_ARGS:
        if rest.strip(" "):
            raise _fail(f"Syntax error: {verb} takes no arguments", _E_ARGS)
        return Command(verb)
    if verb == "EHLO" or verb == "HELO":
        domain = rest.strip(" ")
        if not domain or " " in domain or not domain.isprintable():
            raise _fail(f"Syntax error: {verb} requires a domain or address literal", _E_ARGS)
        if _octets(domain) > MAX_DOMAIN:
            raise _fail(f"Syntax error: {verb} domain over {MAX_DOMAIN} octets", _E_ARGS)
        return Command(verb, domain)
    if verb == "BDAT":
        m = _BDAT.fullmatch(rest)
        return Command("BDAT", m[1] if m is not None else "")
    if verb in _FREE_ARGS or verb == "AUTH":  # AUTH's arguments are smtp/auth.py's business
        return Command(verb, rest.strip(" "))
    if verb in _UNIMPLEMENTED:
        raise _fail("Command unimplemented", _E_UNIMPLEMENTED)
    raise _fail("Syntax error: command unrecognized", _E_UNKNOWN)


_KNOWN_VERBS: Final = frozenset({"MAIL", "RCPT", "EHLO", "HELO", "AUTH"}) | _NO_ARGS | _FREE_ARGS


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _short(local: str, domain: str) -> bool:
    """True when an ASCII ``<local@domain>`` is within RFC 5321's limits."""
    return len(local) + len(domain) + 3 <= MAX_PATH


def _too_long(path: str, domain: str) -> str | None:
    """What makes a path longer than RFC 5321 §4.5.3.1 allows, or None."""
    if _octets(domain) > MAX_DOMAIN:
        return f"domain over {MAX_DOMAIN} octets"
    if _octets(path) > MAX_PATH:
        return f"path over {MAX_PATH} octets"
    return None


def _split_prefix(rest: str, prefix: str, usage: str) -> str:
    if rest[: len(prefix)].upper() != prefix:
        raise _fail(f"Syntax error: expected {usage}", _E_ARGS)
    return rest[len(prefix) :].lstrip(" ")


def _parse_mail(rest: str) -> Command:
    arg = _split_prefix(rest, "FROM:", "MAIL FROM:<address>")
    if arg.startswith("<>"):
        address, tail = NULL_SENDER, arg[2:]
        if tail and tail[0] != " ":
            raise _fail("Syntax error in sender address", _E_SENDER)
    else:
        address, tail = parse_path(arg, _E_SENDER, "sender")
    params = _parse_mail_params(tail)
    if not params.smtputf8 and not (address.local_part.isascii() and address.domain.isascii()):
        raise _fail("non-ASCII sender requires SMTPUTF8", _E_NON_ASCII)
    return Command("MAIL", address=address, params=params)


def _parse_rcpt(rest: str, smtputf8: bool) -> Command:
    arg = _split_prefix(rest, "TO:", "RCPT TO:<address>")
    if arg[:12].lower() == "<postmaster>":
        # RFC 5321 §4.1.1.3: <Postmaster> without a domain MUST be accepted.
        address, tail = EnvelopeAddress(arg[1:11], ""), arg[12:]
        if tail and tail[0] != " ":
            raise _fail("Syntax error in recipient address", _E_RECIPIENT)
    else:
        address, tail = parse_path(arg, _E_RECIPIENT, "recipient")
    if tail.strip(" "):
        _check_params_syntax(tail)
        raise _fail("RCPT TO parameters not recognized or not implemented", _E_PARAM_UNKNOWN)
    if not smtputf8 and not (address.local_part.isascii() and address.domain.isascii()):
        raise _fail("non-ASCII recipient requires SMTPUTF8", _E_NON_ASCII)
    return Command("RCPT", address=address)


def parse_path(text: str, hint: tuple[int, str], what: str) -> tuple[EnvelopeAddress, str]:
    """Parse ``<[@route,...:]local@domain>`` at the start of ``text``.

    Returns the address (source route dropped) and the text after the ``>``; raises
    ``RemoteProtocolError`` with ``hint`` when the path is malformed.
    """
    m = _PATH.match(text)
    if m is None:
        raise _fail(f"Syntax error in {what} address", hint)
    tail = text[m.end() :]
    if tail and tail[0] != " ":
        raise _fail(f"Syntax error in {what} address", hint)
    domain = m.group("domain")
    problem = _too_long(m.group(0), domain)
    if problem is not None:
        raise _fail(f"{what.capitalize()} address too long: {problem}", hint)
    if domain[0] == "[" and not _valid_address_literal(domain[1:-1]):
        raise _fail(f"Syntax error in {what} address: invalid address literal", hint)
    return EnvelopeAddress(m.group("local"), domain), tail


def _valid_address_literal(inner: str) -> bool:
    if _IPV4_LITERAL.fullmatch(inner):
        return all(int(part) <= 255 for part in inner.split("."))
    tag, sep, content = inner.partition(":")
    if not sep or not content:
        return False
    if tag.upper() == "IPV6":
        try:
            ipaddress.IPv6Address(content)
        except ValueError:
            return False
        return True
    # General-address-literal: Standardized-tag = Ldh-str registered with IANA.
    return re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?", tag) is not None


def _check_params_syntax(tail: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for word in tail.split(" "):
        if not word:
            continue
        m = _ESMTP_PARAM.fullmatch(word)
        if m is None:
            raise _fail("Syntax error in parameters", _E_ARGS)
        out.append((m.group(1).upper(), m.group(2)))
    return out


def _parse_mail_params(tail: str) -> EsmtpParams:
    if not tail.strip(" "):
        return NO_PARAMS
    name, eq, number = tail.partition("=")
    if eq and name.upper() == "SIZE" and number.isdigit() and number.isascii() and len(number) < 20:
        return EsmtpParams(size=int(number))  # the common case: SIZE alone
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    seen: set[str] = set()
    for key, value in _check_params_syntax(tail):
        if key in seen:
            raise _fail(f"Syntax error: duplicate parameter {key}", _E_ARGS)
        seen.add(key)
        if key == "SIZE":
            if value is None or not value.isdigit() or not value.isascii() or len(value) > 20:
                raise _fail("Syntax error in SIZE parameter", _E_ARGS)
            size = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in _BODY_VALUES:
                raise _fail("Syntax error in BODY parameter: expected 7BIT or 8BITMIME", _E_ARGS)
            body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise _fail("Syntax error: SMTPUTF8 takes no value", _E_ARGS)
            smtputf8 = True
        else:
            raise _fail("MAIL FROM parameters not recognized or not implemented", _E_PARAM_UNKNOWN)
    return EsmtpParams(size=size, body=body, smtputf8=smtputf8)
