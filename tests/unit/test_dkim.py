"""DKIM signing: kumoq.dkim's signatures checked by dkimpy (an independent verifier, given the
public key through its ``dnsfunc``), for RSA and ed25519, every canonicalization pair, with and
without over-signing; then ``kumo.dkim.*_signer`` and ``msg:dkim_sign`` from a real policy."""

from __future__ import annotations

import base64
import textwrap
import time
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kumoq.clock import FakeClock
from kumoq.dkim import DkimError, Signer, load_private_key
from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.lua.dkim_api import SignerCache, build_signer
from kumoq.message import EnvelopeAddress, Message, new_spool_id

NOW = float(int(time.time()))  # dkimpy checks x= against the real clock
HEADERS = (
    b"From: Jane <jane@example.com>\r\n"
    b"To: a@example.net\r\n"
    b"Subject:   hello    there \r\n  folded\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
)
BODY = b"Hello  \t world \r\n\r\nsecond line\r\n\r\n\r\n"
DATA = HEADERS + b"\r\n" + BODY

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def dns_txt(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def verify(signed: bytes, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sel._domainkey.example.com."
        return dns_txt(key)

    return bool(dkim.verify(signed, dnsfunc=dnsfunc))


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
@pytest.mark.parametrize("hc", ["simple", "relaxed"])
@pytest.mark.parametrize("bc", ["simple", "relaxed"])
@pytest.mark.parametrize("over_sign", [False, True])
def test_signatures_verify_with_dkimpy(key, hc, bc, over_sign) -> None:
    signer = Signer(
        key=key,
        domain="example.com",
        selector="sel",
        headers=("From", "To", "Subject", "Cc"),
        header_canonicalization=hc,
        body_canonicalization=bc,
        over_sign=over_sign,
        expiration=3600,
    )
    field = signer.sign([DATA], int(NOW))
    assert field.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert verify(field + DATA, key)
    tampered = (field + DATA).replace(b"second line", b"second lime")
    assert not verify(tampered, key)


def test_over_signing_lists_each_header_once_more_than_present() -> None:
    signer = Signer(RSA_KEY, "example.com", "sel", ("From", "To", "Subject", "Cc"), over_sign=True)
    field = signer.sign([DATA], int(NOW))
    assert b"h=from:from:to:to:subject:subject:cc;" in field.replace(b"\r\n\t", b" ")
    signed = field + DATA
    assert verify(signed, RSA_KEY)
    # a header added on the way (here a second Subject) breaks an over-signed signature
    extra = signed.replace(b"Date:", b"Subject: forged\r\nDate:")
    assert not verify(extra, RSA_KEY)


def test_a_shared_body_is_signed_in_place() -> None:
    signer = Signer(ED_KEY, "example.com", "sel", ("From", "Subject"))
    parts = [b"Received: by kumoq\r\n", DATA]
    assert signer.sign(parts, int(NOW)) == signer.sign([b"".join(parts)], int(NOW))
    split = [DATA[:30], DATA[30:]]  # the header block spans both pieces
    assert signer.sign(split, int(NOW)) == signer.sign([DATA], int(NOW))
    at_boundary = [HEADERS, b"\r\n" + BODY]
    assert signer.sign(at_boundary, int(NOW)) == signer.sign([DATA], int(NOW))


def test_optional_tags() -> None:
    signer = Signer(
        RSA_KEY,
        "example.com",
        "sel",
        ("From",),
        agent_user_identifier="@example.com",
        body_length=True,
        reporting=True,
        expiration=60,
    )
    field = signer.sign([DATA], int(NOW)).replace(b"\r\n\t", b" ")
    for tag in (b"i=@example.com;", b"r=y;", f"x={int(NOW) + 60};".encode(), b" l="):
        assert tag in field
    assert verify(field + DATA, RSA_KEY)


def test_key_formats_and_errors() -> None:
    pkcs1 = RSA_KEY.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    assert isinstance(load_private_key(pkcs1, "rsa-sha256"), rsa.RSAPrivateKey)
    der = ED_KEY.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    assert isinstance(load_private_key(der, "ed25519-sha256"), ed25519.Ed25519PrivateKey)
    with pytest.raises(DkimError, match="expected an RSA private key"):
        load_private_key(der, "rsa-sha256")
    with pytest.raises(DkimError, match="cannot load the private key"):
        load_private_key(b"not a key", "rsa-sha256")


# -- from the policy --------------------------------------------------------------------------


def make(data: bytes = DATA, **kw) -> Message:
    return Message(
        id=new_spool_id(NOW),
        sender=EnvelopeAddress.parse("jane@example.com"),
        recipients=[EnvelopeAddress.parse("a@example.net")],
        data=data,
        **kw,
    )


def run(tmp_path: Path, body: str, *args: object) -> object:
    path = tmp_path / "init.lua"
    path.write_text(f"kumo.on('t', function(msg)\n{textwrap.dedent(body)}\nend)\n")
    return PolicyEvents(PolicyRuntime(path, clock=FakeClock(NOW))).call("t", *args)


@pytest.mark.parametrize(
    ("kind", "key", "canon"),
    [
        ("rsa_sha256_signer", RSA_KEY, "Relaxed"),
        ("rsa_sha256_signer", RSA_KEY, "Simple"),
        ("ed25519_signer", ED_KEY, "Relaxed"),
        ("ed25519_signer", ED_KEY, "Simple"),
    ],
)
def test_msg_dkim_sign_from_a_policy(tmp_path, kind, key, canon) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem(key))
    msg = make()
    run(
        tmp_path,
        f"""
        local signer = kumo.dkim.{kind} {{
          domain = 'example.com', selector = 'sel', headers = {{'From', 'To', 'Subject'}},
          key = '{key_file}', over_sign = true,
          header_canonicalization = '{canon}', body_canonicalization = '{canon}',
        }}
        msg:dkim_sign(signer)
        """,
        msg,
    )
    assert msg.data is not None
    assert msg.data.startswith(b"DKIM-Signature: ")
    assert verify(msg.data, key)


def test_key_data_and_a_shared_body_stays_shared(tmp_path) -> None:
    body = DATA
    msg = make(data=b"Received: by kumoq\r\n", shared_body=body)
    other = make(data=b"", shared_body=body)
    msg.meta["k"] = pem(ED_KEY)
    run(
        tmp_path,
        """
        msg:dkim_sign(kumo.dkim.ed25519_signer {
          domain = 'example.com', selector = 'sel', headers = {'From'},
          key = {key_data = msg:get_meta('k')},
        })
        """,
        msg,
    )
    assert msg.shares_body
    parts = msg.data_parts()
    assert parts is not None
    assert parts[1] is body
    assert other.data == DATA
    assert msg.data is not None
    assert verify(msg.data, ED_KEY)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ("key = '/nonexistent/k.pem'", "cannot read the key file '/nonexistent/k.pem'"),
        ("key = {key_data = 'junk'}", "cannot load the private key"),
        ("key = {vault_path = 'x'}", "Vault key sources are not available"),
        (
            "key = {key_data = 'x'}, header_canonicalization = 'Loose'",
            "header_canonicalization must be 'Relaxed' or 'Simple', got 'Loose'",
        ),
        ("key = {key_data = 'x'}, colour = 1", "unknown key 'colour'"),
    ],
)
def test_signer_errors_name_the_policy_line(tmp_path, params, error) -> None:
    body = (
        "local s = kumo.dkim.rsa_sha256_signer {\n"
        f"  domain = 'example.com', selector = 'sel', headers = {{'From'}}, {params} }}"
    )
    with pytest.raises(PolicyError, match="rsa_sha256_signer") as info:
        run(tmp_path, body, make())
    assert error in str(info.value)
    assert "init.lua:2:" in str(info.value)


def test_dkim_sign_wants_a_signer(tmp_path) -> None:
    with pytest.raises(PolicyError, match=r"init.lua:2: dkim_sign: expected a signer"):
        run(tmp_path, "msg:dkim_sign({})", make())


def test_the_signer_cache_keeps_a_signer_for_its_ttl(tmp_path) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_text(pem(RSA_KEY))
    now = [0.0]
    cache = SignerCache(monotonic=lambda: now[0])
    params = {"domain": "d", "selector": "s", "headers": ["From"], "key": str(key_file), "ttl": 60}
    first = cache.get("rsa_sha256_signer", params)
    key_file.unlink()  # the cached signer does not read the file again
    assert cache.get("rsa_sha256_signer", params) is first
    now[0] = 61.0
    with pytest.raises(DkimError, match="cannot read the key file"):
        cache.get("rsa_sha256_signer", params)
    assert (cache.hits, cache.misses) == (1, 2)


def test_expiration_may_be_a_lua_float() -> None:
    params = {
        "domain": "example.com",
        "selector": "sel",
        "headers": ["From"],
        "key": {"key_data": pem(ED_KEY)},
        "expiration": 3600.0,
    }
    signer, ttl = build_signer("ed25519_signer", params)
    assert (signer.expiration, ttl) == (3600, 300.0)
    with pytest.raises(DkimError, match="expiration must be a number of seconds"):
        build_signer("ed25519_signer", params | {"expiration": "1h"})
