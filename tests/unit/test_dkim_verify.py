"""msg:dkim_verify, msg:arc_verify and msg:arc_seal (kumoq.lua.dkim_verify_api over dkimpy).

Real Lua, real signatures (kumoq's signer and dkimpy's), the keys published as TXT records in
the zone-text TestResolver behind the policy's DNS (no network)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kumoq.clock import FakeClock
from kumoq.dkim import Signer
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.lua.dkim_verify import seal_arc, verify_arc, verify_dkim
from kumoq.lua.dkim_verify_api import key_names
from kumoq.message import EnvelopeAddress, Message, new_spool_id

NOW = float(int(time.time()))  # dkimpy checks t= and x= against the real clock
DATA = (
    b"From: Jane <jane@example.com>\r\nTo: a@example.net\r\nSubject: hello\r\n\r\nHello world\r\n"
)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def txt(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()


def quoted(text: str) -> str:
    """A TXT record's text as zone-file strings of at most 255 characters."""
    return " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))


ZONE = f"""
$ORIGIN example.com.
$TTL 300
rsa._domainkey   TXT {quoted(txt(RSA_KEY))}
ed._domainkey    TXT {quoted(txt(ED_KEY))}
bad._domainkey   TXT "v=DKIM1; k=rsa; p=not-base64!"
"""

POLICY = """
local kumo = require 'kumo'
local function signer(kind, selector, key)
  return kumo.dkim[kind] {
    domain = 'example.com', selector = selector, headers = { 'From', 'To', 'Subject' },
    key = { key_data = key },
  }
end
kumo.on('verify', function(msg) return msg:dkim_verify() end)
kumo.on('arc_verify', function(msg) return msg:arc_verify() end)
kumo.on('seal', function(msg, kind, selector, key)
  local results = msg:dkim_verify()
  table.insert(results, msg:arc_verify())
  msg:arc_seal(signer(kind, selector, key), 'mx.example.net', results)
end)
kumo.on('sign', function(msg, kind, selector, key)
  msg:dkim_sign(signer(kind, selector, key))
end)
kumo.on('named', function(msg) return msg:dkim_verify('other') end)
kumo.on('caught', function(msg)
  local ok, err = pcall(msg.dkim_verify, msg)
  return { ok, tostring(err) }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {}
end)
"""


def load(tmp_path: Path) -> PolicyRuntime:
    path = tmp_path / "init.lua"
    path.write_text(POLICY)
    rt = PolicyRuntime(path, clock=FakeClock(NOW))
    rt.fire_init()
    rt.waits.dns = MxCache(TestResolver.from_zone_text(ZONE))
    return rt


def make(data: bytes = DATA) -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("jane@example.com"),
        recipients=[EnvelopeAddress.parse("a@example.net")],
        data=data,
    )


async def call(rt: PolicyRuntime, name: str, msg: Message, *args: object) -> Any:
    """Fire ``name`` on ``msg`` the way the awaited SMTP events do."""
    h = rt.bind_message(msg)
    try:
        return await rt.invoke_async(name, "m" + "v" * len(args), h, *args)
    finally:
        rt.unbind(h)


async def signed(rt: PolicyRuntime, kind: str, selector: str, key: Any) -> Message:
    msg = make()
    await call(rt, "sign", msg, kind, selector, pem(key))
    return msg


@pytest.mark.parametrize(
    ("kind", "selector", "key", "alg"),
    [
        ("rsa_sha256_signer", "rsa", RSA_KEY, "rsa-sha256"),
        ("ed25519_signer", "ed", ED_KEY, "ed25519-sha256"),
    ],
    ids=["rsa", "ed25519"],
)
async def test_a_kumoq_signature_passes(tmp_path: Path, kind, selector, key, alg) -> None:
    rt = load(tmp_path)
    msg = await signed(rt, kind, selector, key)
    [result] = await call(rt, "verify", msg)
    assert result["method"] == "dkim"
    assert result["result"] == "pass", result
    assert result.get("reason") is None
    props = result["props"]
    assert props["header.d"] == "example.com"
    assert props["header.i"] == "@example.com"
    assert props["header.s"] == selector
    assert props["header.a"] == alg
    assert len(props["header.b"]) == 8


async def test_a_dkimpy_signature_passes_and_a_message_without_any_gives_none(
    tmp_path: Path,
) -> None:
    rt = load(tmp_path)
    key = RSA_KEY.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    sig = dkim.sign(DATA, b"rsa", b"example.com", key, include_headers=[b"From", b"Subject"])
    [result] = await call(rt, "verify", make(sig + DATA))
    assert result["result"] == "pass"
    assert await call(rt, "verify", make()) in ({}, [])
    # No signature needs no DNS, so a synchronous event may verify too.
    assert PolicyEvents(rt).call("verify", make()) in ({}, [])


async def test_a_tampered_body_or_header_is_a_permerror_as_in_kumomta(tmp_path: Path) -> None:
    rt = load(tmp_path)
    msg = await signed(rt, "rsa_sha256_signer", "rsa", RSA_KEY)
    assert msg.data is not None
    [body] = await call(rt, "verify", make(msg.data + b"more\r\n"))
    assert (body["result"], body["reason"]) == ("permerror", "body hash did not verify")
    tampered = msg.data.replace(b"Subject: hello", b"Subject: HELLO")
    [header] = await call(rt, "verify", make(tampered))
    assert (header["result"], header["reason"]) == ("permerror", "signature did not verify")


async def test_key_problems(tmp_path: Path) -> None:
    rt = load(tmp_path)
    missing = await signed(rt, "rsa_sha256_signer", "gone", RSA_KEY)
    [result] = await call(rt, "verify", missing)
    assert result["result"] == "temperror"  # KumoMTA: KeyUnavailable
    assert result["reason"] == "key unavailable: failed to resolve gone._domainkey.example.com"
    wrong = await signed(rt, "rsa_sha256_signer", "rsa", OTHER_KEY)
    [result] = await call(rt, "verify", wrong)
    assert result["result"] == "permerror"
    bad = await signed(rt, "rsa_sha256_signer", "bad", RSA_KEY)
    [result] = await call(rt, "verify", bad)
    assert result["result"] == "permerror"
    assert result["reason"].startswith("key syntax error")


async def test_errors(tmp_path: Path) -> None:
    rt = load(tmp_path)
    msg = await signed(rt, "ed25519_signer", "ed", ED_KEY)
    with pytest.raises(PolicyError, match="no resolver named other"):
        await call(rt, "named", msg)
    # A signed message needs DNS: an error the policy may pcall in a synchronous event.
    ok, err = PolicyEvents(rt).call("caught", msg)
    assert ok is False
    assert err.startswith("dkim_verify: cannot wait in this event")  # pcall: no line
    assert msg.data is not None
    [result] = verify_dkim(msg.data.replace(b"\r\n", b"\n"), {})
    assert result["reason"] == "message has non-canonical line endings"


async def test_arc_seal_then_arc_verify_round_trip(tmp_path: Path) -> None:
    rt = load(tmp_path)
    msg = await signed(rt, "rsa_sha256_signer", "rsa", RSA_KEY)
    none = await call(rt, "arc_verify", msg)
    assert none["method"] == "arc"
    assert none["result"] == "none"
    await call(rt, "seal", msg, "rsa_sha256_signer", "rsa", pem(RSA_KEY))
    assert msg.data is not None
    assert msg.data.startswith(b"ARC-Seal: i=1; cv=none;")
    assert b"ARC-Authentication-Results: i=1; mx.example.net;\r\n\tdkim=pass" in msg.data
    first = await call(rt, "arc_verify", msg)
    assert (first["result"], first["props"]) == ("pass", {"header.oldest-pass": "0"})
    # dkimpy's own arc_verify agrees; a second hop extends the chain with cv=pass.
    public = {b"rsa._domainkey.example.com.": txt(RSA_KEY).encode()}
    cv, _, reason = dkim.arc_verify(msg.data, dnsfunc=lambda name, timeout=5: public.get(name))
    assert cv == dkim.CV_Pass, reason
    await call(rt, "seal", msg, "rsa_sha256_signer", "rsa", pem(RSA_KEY))
    assert msg.data.startswith(b"ARC-Seal: i=2; cv=pass;")
    second = await call(rt, "arc_verify", msg)
    assert second["result"] == "pass", second
    assert key_names(msg.data, "arc") == ["rsa._domainkey.example.com"]
    # RFC 8617 defines rsa-sha256 only: an ed25519 signer cannot seal.
    with pytest.raises(PolicyError, match="ARC sealing needs an rsa_sha256_signer"):
        await call(rt, "seal", msg, "ed25519_signer", "ed", pem(ED_KEY))


async def test_arc_verify_of_a_tampered_message_fails_and_it_is_not_sealed(
    tmp_path: Path,
) -> None:
    rt = load(tmp_path)
    msg = make()
    await call(rt, "seal", msg, "rsa_sha256_signer", "rsa", pem(RSA_KEY))
    assert msg.data is not None
    tampered = make(msg.data + b"appended by a list\r\n")
    result = await call(rt, "arc_verify", tampered)
    assert result["result"] == "fail"
    assert result["reason"]
    assert result["props"] == {"header.oldest-pass": "0"}
    before = tampered.data
    await call(rt, "seal", tampered, "rsa_sha256_signer", "rsa", pem(RSA_KEY))
    assert tampered.data == before  # KumoMTA: a broken chain is not sealed


def test_seal_arc_wants_from_signed() -> None:
    signer = Signer(key=RSA_KEY, domain="example.com", selector="rsa", headers=("Subject",))
    with pytest.raises(ValueError, match="must include From"):
        seal_arc(DATA, signer, "mx", [], {}, int(NOW))


async def test_two_signatures_give_two_results_and_keys_are_cached(tmp_path: Path) -> None:
    rt = load(tmp_path)
    msg = await signed(rt, "rsa_sha256_signer", "rsa", RSA_KEY)
    await call(rt, "sign", msg, "ed25519_signer", "ed", pem(ED_KEY))
    results = await call(rt, "verify", msg)
    assert [(r["result"], r["props"]["header.s"]) for r in results] == [
        ("pass", "ed"),
        ("pass", "rsa"),
    ]
    assert results[0]["props"]["header.b"] != results[1]["props"]["header.b"]
    assert rt.waits.dns is not None
    resolver = rt.waits.dns.resolver  # type: ignore[attr-defined]
    asked = len(resolver.queries)
    await call(rt, "verify", msg)
    assert len(resolver.queries) == asked  # answered from the cache (their TTL)


@pytest.mark.parametrize(
    "header",
    [
        b"DKIM-Signature: garbage\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=; b=\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=x; b=!!\r\n",
    ],
)
def test_malformed_signatures_are_permerrors(header: bytes) -> None:
    [result] = verify_dkim(header + DATA, {})
    assert (result["method"], result["result"]) == ("dkim", "permerror")
    assert result["reason"]


@pytest.mark.parametrize(
    "headers",
    [
        b"ARC-Seal: i=1; garbage\r\n",
        b"ARC-Seal: i=2; a=rsa-sha256; cv=none; d=example.com; s=rsa; b=AA==\r\n",
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.com; s=rsa; b=AA==\r\n"
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=example.com; s=rsa; h=from; bh=AA==;"
        b" b=AA==\r\nARC-Authentication-Results: i=1; mx; none\r\n",
    ],
)
def test_a_malformed_chain_fails(headers: bytes) -> None:
    status = verify_arc(headers + DATA, {})
    assert status.status == "fail"
    assert status.result["reason"]
