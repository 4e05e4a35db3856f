"""End to end: smtp_server_message_received verifies the DKIM signature of a received message
(the key answered by kumo.dns.configure_test_resolver), records the result in an
Authentication-Results header and seals the ARC chain; the delivered message carries both, and
dkimpy, reading only the delivered bytes, passes the signature and the chain."""

from __future__ import annotations

import base64
import email
import email.policy

import dkim
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC = (
    "v=DKIM1; k=rsa; p="
    + base64.b64encode(
        KEY.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
)
PEM = KEY.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()
TXT = " ".join(f'"{PUBLIC[i : i + 250]}"' for i in range(0, len(PUBLIC), 250))
ZONES = f"""
$ORIGIN example.com.
sel._domainkey TXT {TXT}
"""

VERIFY = f"""
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local results = msg:dkim_verify()
  table.insert(results, msg:arc_verify())
  local server_id = msg:get_meta 'hostname' or 'mx.test'
  msg:add_authentication_results(server_id, results)
  msg:arc_seal(kumo.dkim.rsa_sha256_signer {{
    domain = 'example.com', selector = 'sel', headers = {{ 'From', 'To', 'Subject' }},
    key = {{ key_data = [[{PEM}]] }},
  }}, server_id, results)
end)
"""

MESSAGE = (
    b"From: Ann <ann@example.com>\r\nTo: r@example.net\r\nSubject: signed\r\n\r\nA signed body.\r\n"
)


def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    return PUBLIC.encode() if name.rstrip(b".") == b"sel._domainkey.example.com" else None


def test_a_received_signature_is_verified_recorded_and_sealed(kumoq) -> None:
    text = policy(VERIFY, MAILDIR_QUEUE).replace(
        "kumo.configure_local_logs {",
        f"kumo.dns.configure_test_resolver [[{ZONES}]]\n  kumo.configure_local_logs {{",
    )
    daemon = kumoq(text)
    pkcs1 = KEY.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    signature = dkim.sign(
        MESSAGE, b"sel", b"example.com", pkcs1, include_headers=[b"From", b"To", b"Subject"]
    )
    daemon.send("ann@example.com", ["r@example.net"], body=signature + MESSAGE)
    daemon.wait_for_records("Delivery", 1)
    (path,) = daemon.maildir_files()
    data = path.read_bytes()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    results = str(msg["Authentication-Results"])
    assert results.startswith("mx.test;")
    assert "dkim=pass" in results
    assert "header.d=example.com" in results
    assert "arc=none" in results
    assert "cv=none" in str(msg["ARC-Seal"])
    assert "dkim=pass" in str(msg["ARC-Authentication-Results"])
    assert dkim.verify(data, dnsfunc=dnsfunc)
    cv, _, reason = dkim.arc_verify(data, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
