"""DKIM verification, ARC verification and ARC sealing with dkimpy, on DNS answers fetched
beforehand (kumoq.lua.dkim_verify_api fetches them; here the ``dnsfunc`` only reads them).

The results follow KumoMTA's ``crates/dkim`` (``verify_email_with_resolver``, ``arc.rs``):

- a DKIM-Signature gives ``pass``; ``permerror`` for a signature or key record that does not
  parse, a body hash or signature that does not verify (``body hash did not verify``,
  ``signature did not verify``); ``temperror`` when there is no key record
  (``key unavailable: failed to resolve <name>``) or DNS failed. A message with bare LF line
  endings gives one ``permerror`` (``message has non-canonical line endings``);
- the ARC chain gives ``none`` (no ARC sets), ``pass`` or ``fail`` with the reason;
- sealing adds nothing to a failing chain; otherwise ARC-Seal, ARC-Message-Signature and
  ARC-Authentication-Results for the next instance, ``cv=none`` for the first, else ``pass``.

dkimpy's ``ARC.sign`` takes its results and ``cv`` from an Authentication-Results header of
the message (and needs the authres package), so ``seal_arc`` builds the set itself from
dkimpy's parts (``sorted_arc_headers``, ``gen_header``), as ``ARC.sign`` does after that.

L2: imports dkimpy (and pynacl, its ed25519), cryptography (to hand dkimpy the signer's key),
kumoq.dkim and kumoq.header_values; nothing of the runtime.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import dkim
import dkim.crypto
import dkim.util
import nacl.signing
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519

from kumoq.dkim import Signer
from kumoq.header_values import encode_authentication_results

__all__ = ["ArcStatus", "parse_headers", "seal_arc", "tags_of", "verify_arc", "verify_dkim"]

Answers = Mapping[str, list[str] | str]
"""``<s>._domainkey.<d>`` (lower case) -> its TXT records, or the DNS failure's text."""

_QUIET: Final = logging.getLogger("kumoq.dkim_verify")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # dkimpy logs every failed check as an error
_QUIET.setLevel(logging.CRITICAL + 1)
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_BROKEN: Final = (dkim.DKIMException, LookupError, ValueError, TypeError)
"""What dkimpy raises on a malformed message (a hostile one must not become an internal error)."""
_RELAXED: Final = b"relaxed/relaxed"
_PROPS: Final = (
    ("a", "header.a"),
    ("s", "header.s"),
    ("c", "header.c"),
    ("t", "header.t"),
    ("x", "header.x"),
)


def parse_headers(data: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as ``(name, raw value)``; none when the block does not parse."""
    try:
        headers, _ = dkim.rfc822_parse(data)
    except _BROKEN:
        return []
    return [(bytes(k), bytes(v)) for k, v in headers]


def tags_of(value: bytes) -> dict[str, str] | None:
    """A signature's ``tag=value`` list, or None when it does not parse."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except (dkim.util.InvalidTagValueList, ValueError):
        return None
    return {k.decode("ascii", "replace"): v.decode("utf-8", "replace") for k, v in tags.items()}


def _dnsfunc(answers: Answers) -> Any:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        found = answers.get(name.decode("ascii", "replace").lower().rstrip("."))
        if isinstance(found, list):  # dkimpy reads one record: the first that holds a key
            for record in found:
                if "p=" in record:
                    return record.encode("utf-8", "replace")
        return None

    return dnsfunc


def _result(result: str, reason: str | None, props: dict[str, str]) -> dict[str, Any]:
    return {"method": "dkim", "result": result, "reason": reason, "props": props}


def _header_b(b_tag: str, others: Sequence[str]) -> str:
    """RFC 6008: at least 8 characters of ``b=``, unique among the message's signatures."""
    length = 8
    while length < len(b_tag):
        if not any(o != b_tag and o[:length] == b_tag[:length] for o in others):
            return b_tag[:length]
        length += 2
    return b_tag


def verify_dkim(data: bytes, answers: Answers) -> list[dict[str, Any]]:
    """One AuthenticationResult per DKIM-Signature (the first ten), KumoMTA's shape."""
    if _BARE_LF.search(data):
        return [_result("permerror", "message has non-canonical line endings", {})]
    try:
        d = dkim.DKIM(data, logger=_QUIET)
    except _BROKEN as e:
        return [_result("permerror", f"failed to parse message: {e}", {})]
    raw = [v for k, v in d.headers if k.lower() == b"dkim-signature"][:10]
    parsed = [tags_of(v) for v in raw]
    b_tags = [re.sub(r"\s+", "", t.get("b", "")) for t in parsed if t is not None]
    dnsfunc = _dnsfunc(answers)
    results = []
    for idx, tags in enumerate(parsed):
        props: dict[str, str] = {}
        if tags is not None and "d" in tags:
            props["header.d"] = tags["d"]
            props["header.i"] = "@" + tags["d"]
        for tag, prop in _PROPS:
            if tags is not None and tag in tags:
                props[prop] = tags[tag]
        try:
            prep = d.verify_headerprep(idx)
        except _BROKEN as e:
            results.append(_result("permerror", f"signature syntax error: {e}", props))
            continue
        assert tags is not None
        assert prep
        sig, include_headers, sigheaders = prep
        props["header.b"] = _header_b(re.sub(r"\s+", "", tags["b"]), b_tags)
        name = f"{tags['s']}._domainkey.{tags['d']}".lower().rstrip(".")
        answer = answers.get(name)
        if isinstance(answer, str):
            results.append(_result("temperror", f"key unavailable: {answer}", props))
            continue
        if not answer:
            results.append(
                _result("temperror", f"key unavailable: failed to resolve {name}", props)
            )
            continue
        outcome: tuple[str, str | None] = ("permerror", "key syntax error")
        for record in answer:
            outcome = _check(d, name, record, sig, include_headers, sigheaders[idx], dnsfunc)
            if outcome[0] == "pass":
                break
        results.append(_result(outcome[0], outcome[1], props))
    return results


def _check(
    d: Any, name: str, record: str, sig: Any, include: Any, header: Any, dnsfunc: Any
) -> tuple[str, str | None]:
    try:
        d.pk, d.keysize, d.ktag, d.seqtlsrpt = dkim.evaluate_pk(name, record.encode())
    except _BROKEN as e:
        return "permerror", f"key syntax error: {e}"
    try:
        ok = d.verify_sig_process(sig, list(include), header, dnsfunc)
    except dkim.ValidationError as e:
        if "body hash mismatch" in str(e):
            return "permerror", "body hash did not verify"
        return "permerror", str(e)
    except _BROKEN as e:
        return "permerror", str(e)
    return ("pass", None) if ok else ("permerror", "signature did not verify")


@dataclass(frozen=True, slots=True)
class ArcStatus:
    """The chain's status and the AuthenticationResult ``arc_verify`` returns."""

    status: str  # none, pass or fail
    instances: int
    result: dict[str, Any]


def verify_arc(data: bytes, answers: Answers) -> ArcStatus:
    """The ARC chain's validation status (RFC 8617), as KumoMTA reports it."""
    try:
        arc = dkim.ARC(data, logger=_QUIET)
        instances, _ = arc.sorted_arc_headers()
        cv, checked, reason = arc.verify(dnsfunc=_dnsfunc(answers))
    except _BROKEN as e:
        instances, cv, checked, reason = 1, dkim.CV_Fail, [], str(e)
    props: dict[str, str] = {}
    if instances == 0:
        return ArcStatus(
            "none", 0, {"method": "arc", "result": "none", "reason": None, "props": props}
        )
    status = "pass" if cv == dkim.CV_Pass else "fail"
    oldest = 0
    if status == "fail":  # the last instance of the run from 1 that validates
        for entry in sorted(checked, key=lambda e: int(e["instance"])):
            if not (entry.get("ams-valid") and entry.get("as-valid")):
                break
            oldest = int(entry["instance"])
    props["header.oldest-pass"] = str(oldest)
    return ArcStatus(
        status,
        instances,
        {
            "method": "arc",
            "result": status,
            "reason": None if status == "pass" else reason,
            "props": props,
        },
    )


def _dkimpy_key(signer: Signer) -> Any:
    key = signer.key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        return nacl.signing.SigningKey(raw)
    pem = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    return dkim.crypto.parse_pem_private_key(pem)


def seal_arc(
    data: bytes,
    signer: Signer,
    server_id: str,
    results: Sequence[Mapping[str, Any]],
    answers: Answers,
    now: int,
) -> bytes:
    """The ARC set to prepend (AS, AMS, AAR), or ``b""`` when the chain fails."""
    if signer.algorithm != "rsa-sha256":
        raise ValueError(
            "ARC sealing needs an rsa_sha256_signer: RFC 8617 defines rsa-sha256 only, and "
            "verifiers (dkimpy's too) reject other algorithms"
        )
    chain = verify_arc(data, answers)
    if chain.status == "fail":
        return b""
    instance = chain.instances + 1
    if instance > 50:
        raise ValueError("the ARC chain already has 50 instances")
    algorithm = signer.algorithm.encode()
    a = dkim.ARC(data, logger=_QUIET, signature_algorithm=algorithm)
    include = tuple(h.lower().encode() for h in signer.headers)
    a.include_headers = include
    if b"from" not in include:
        raise ValueError("the signer's headers must include From")
    _, with_instance = a.sorted_arc_headers()
    arc_headers = [y for _, y in with_instance]
    canon = dkim.CanonicalizationPolicy.from_c_value(_RELAXED)
    aar = f"i={instance}; {encode_authentication_results(server_id, results)}\r\n".encode()
    arc_headers.insert(0, (b"ARC-Authentication-Results", aar))
    a.headers = canon.canonicalize_headers(arc_headers[:1]) + a.headers
    a.hasher = dkim.HASH_ALGORITHMS[algorithm]
    bodyhash = base64.b64encode(a.hasher(canon.canonicalize_body(a.body)).digest())
    pk = _dkimpy_key(signer)
    stamp = str(now).encode()
    domain, selector = signer.domain.encode(), signer.selector.encode()
    ams_fields = [
        (b"i", str(instance).encode()),
        (b"a", algorithm),
        (b"c", _RELAXED),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"h", b" : ".join(include)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),
    ]
    ams = a.gen_header(ams_fields, include, canon, b"ARC-Message-Signature", pk)
    arc_headers.insert(0, (b"ARC-Message-Signature", ams))
    a.headers = canon.canonicalize_headers(arc_headers[:1]) + a.headers
    as_fields = [
        (b"i", str(instance).encode()),
        (b"cv", b"none" if instance == 1 else b"pass"),
        (b"a", algorithm),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"b", b"0" * 60),
    ]
    as_include = [x[0].lower() for x in arc_headers]
    as_include.reverse()
    seal: bytes = a.gen_header(as_fields, as_include, canon, b"ARC-Seal", pk)
    return b"".join(
        (b"ARC-Seal: ", seal, b"ARC-Message-Signature: ", ams, b"ARC-Authentication-Results: ", aar)
    )
