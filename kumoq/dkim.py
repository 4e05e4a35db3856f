"""DKIM signing (RFC 6376), rsa-sha256 and ed25519-sha256 (RFC 8463), on ``cryptography``.

``Signer`` holds a loaded private key and KumoMTA's signer parameters (``kumo.dkim.*_signer``);
``Signer.sign(parts, now)`` returns the ``DKIM-Signature:`` header line (CRLF-terminated) for
a message given as the pieces ``Message.data_parts()`` returns, so a body other recipients
share is hashed in place and never copied into a message of its own.

Canonicalization (RFC 6376 §3.4): ``simple`` or ``relaxed`` for the headers and the body, each
independently. Header selection takes the last unused instance of each ``h=`` name, bottom up
(§5.4.2); a name listed more times than the message has it signs its absence. ``over_sign``
lists each name one more time than the message has it, as KumoMTA does, so a header added on
the way breaks the signature.

Why ``cryptography`` and not dkimpy for signing: dkimpy's RSA is pure Python (about 10x slower
per signature); the tests verify with dkimpy, an implementation independent of this one.

Pure: no IO, no clock; imports the standard library, ``cryptography`` and kumoq.errors.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from kumoq.errors import KumoqError

__all__ = ["Algorithm", "Canonicalization", "DkimError", "PrivateKey", "Signer", "load_private_key"]

Canonicalization = Literal["relaxed", "simple"]
Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimError(KumoqError, ValueError):
    """A signer parameter or key is unusable, or the message cannot be signed; the text says
    which. Raised when the signer is made (the policy's line) or by ``sign``."""


_WSP_RUN: Final = re.compile(rb"[ \t]+")
_UNFOLD: Final = re.compile(rb"\r?\n(?=[ \t])")
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")
_MAX_LINE: Final = 78


def load_private_key(data: bytes, algorithm: Algorithm) -> PrivateKey:
    """An RSA key (PKCS#1 or PKCS#8 PEM, or DER) or an ed25519 key (PKCS#8 PEM or DER; raw
    32-byte seed too). Raises DkimError naming what is wrong."""
    key: object
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password=None)
        elif algorithm == "ed25519-sha256" and len(data) == 32:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DkimError(f"cannot load the private key: {e}") from None
    if algorithm == "rsa-sha256" and isinstance(key, rsa.RSAPrivateKey):
        return key
    if algorithm == "ed25519-sha256" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    want = "an RSA" if algorithm == "rsa-sha256" else "an ed25519"
    raise DkimError(f"expected {want} private key, got a {type(key).__name__.lstrip('_')}")


def _split(parts: Sequence[bytes]) -> tuple[bytes, bytes]:
    """``(header block without the blank line, body)``; the body of a shared message is one
    copy of the shared bytes after the header block (hashing needs it whole)."""
    first = parts[0]
    m = _HEADER_END.search(first)
    if m is not None or len(parts) == 1:
        if m is None:
            return first, b""
        return first[: m.start() + (2 if first[m.start()] == 13 else 1)], (
            first[m.end() :] + b"".join(parts[1:])
        )
    rest = parts[1]
    if first.endswith((b"\r\n", b"\n")) and rest.startswith((b"\r\n", b"\n")):
        return first, rest[2 if rest.startswith(b"\r\n") else 1 :]
    m = _HEADER_END.search(rest)
    if m is None:
        return first + rest, b""
    end = m.start() + (2 if rest[m.start()] == 13 else 1)
    return first + rest[:end], rest[m.end() :]


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as ``(lowercased name, raw field with its line ending)``."""
    out: list[tuple[bytes, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line)
        else:
            colon = line.find(b":")
            if colon <= 0:
                continue  # not a header field: the parser of the receiver skips it too
            out.append((line[:colon].strip().lower(), line))
    return out


def _canon_header(raw: bytes, how: Canonicalization) -> bytes:
    if how == "simple":
        return raw if raw.endswith(b"\r\n") else raw.rstrip(b"\r\n") + b"\r\n"
    name, _, value = raw.partition(b":")
    value = _WSP_RUN.sub(b" ", _UNFOLD.sub(b"", value.rstrip(b"\r\n")))
    return name.strip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def _canon_body(body: bytes, how: Canonicalization) -> bytes:
    if b"\n" in body and b"\r\n" not in body:
        body = body.replace(b"\n", b"\r\n")  # a message stored with bare LFs
    if how == "relaxed":  # bytes methods per line: a regex over the body costs ~10x more
        lines = body.split(b"\r\n")
        for i, line in enumerate(lines):
            line = line.rstrip(b" \t")
            lines[i] = _WSP_RUN.sub(b" ", line) if b"\t" in line or b"  " in line else line
        body = b"\r\n".join(lines)
        end = len(body)
        while body.endswith(b"\r\n", 0, end):
            end -= 2
        return body[:end] + b"\r\n" if end else b""
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n"


def _fold(tags: Sequence[bytes], first: int) -> bytes:
    """``tags`` joined by ``; ``, a line break before a tag that would pass 78 columns."""
    out = bytearray()
    col = first
    for i, tag in enumerate(tags):
        sep = b"" if i == 0 else b";"
        if i and col + 3 + len(tag) > _MAX_LINE:  # "; " before it, ";" after it
            out += sep + b"\r\n\t"
            col = 1
        elif i:
            out += sep + b" "
            col += 2
        out += tag
        col += len(tag)
    return bytes(out)


@dataclass(frozen=True, slots=True, eq=False)
class Signer:
    """A DKIM signer: KumoMTA's ``kumo.dkim.rsa_sha256_signer``/``ed25519_signer`` result."""

    key: PrivateKey
    domain: str
    selector: str
    headers: tuple[str, ...]
    header_canonicalization: Canonicalization = "relaxed"
    body_canonicalization: Canonicalization = "relaxed"
    over_sign: bool = False
    agent_user_identifier: str | None = None
    expiration: int | None = None  # seconds after the signing time
    body_length: bool = False
    reporting: bool = False
    atps: str | None = None
    atpsh: str | None = None

    @property
    def algorithm(self) -> Algorithm:
        return "rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else "ed25519-sha256"

    def sign(self, parts: Sequence[bytes], now: int) -> bytes:
        """The ``DKIM-Signature: ...\\r\\n`` field for the message in ``parts`` (its data, or
        its prefix and shared body), signed at ``now`` (Unix seconds)."""
        if not parts:
            raise DkimError("the message data is not loaded")
        block, body = _split(parts)
        canon_body = _canon_body(body, self.body_canonicalization)
        body_hash = base64.b64encode(hashlib.sha256(canon_body).digest())
        fields = _fields(block)
        names = [h.strip().lower().encode() for h in self.headers]
        if self.over_sign:
            counts: dict[bytes, int] = {}
            for name, _ in fields:
                counts[name] = counts.get(name, 0) + 1
            unique = list(dict.fromkeys(names))
            names = [n for n in unique for _ in range(counts.get(n, 0) + 1)]
        hc = self.header_canonicalization
        used: dict[bytes, int] = {}
        hashed = bytearray()
        for name in names:
            seen = used.get(name, 0)
            matches = [raw for n, raw in fields if n == name]
            if seen < len(matches):
                hashed += _canon_header(matches[len(matches) - 1 - seen], hc)
            used[name] = seen + 1
        tags = [
            b"v=1",
            b"a=" + self.algorithm.encode(),
            b"d=" + self.domain.encode(),
            b"s=" + self.selector.encode(),
            f"c={hc}/{self.body_canonicalization}".encode(),
        ]
        if self.agent_user_identifier:
            tags.append(b"i=" + self.agent_user_identifier.encode())
        if self.body_length:
            tags.append(f"l={len(canon_body)}".encode())
        tags.append(f"t={now}".encode())
        if self.expiration is not None:
            tags.append(f"x={now + self.expiration}".encode())
        if self.reporting:
            tags.append(b"r=y")
        if self.atps:
            tags.append(b"atps=" + self.atps.encode())
            tags.append(b"atpsh=" + (self.atpsh or "sha256").encode())
        tags += [b"h=" + b":".join(names), b"bh=" + body_hash, b"b="]
        unsigned = b"DKIM-Signature: " + _fold(tags, len("DKIM-Signature: "))
        hashed += _canon_header(unsigned, hc)[:-2]  # the field itself: no line ending
        if isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(bytes(hashed), padding.PKCS1v15(), hashes.SHA256())
        else:
            signature = self.key.sign(hashlib.sha256(hashed).digest())
        b64 = base64.b64encode(signature)
        col = len(unsigned) - unsigned.rfind(b"\n") - 1
        pieces = [b64[: max(_MAX_LINE - col, 0)]]  # empty: the value starts on the next line
        pieces += [b64[i : i + 72] for i in range(len(pieces[0]), len(b64), 72)]
        return unsigned + b"\r\n\t".join(pieces) + b"\r\n"
