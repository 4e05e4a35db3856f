"""End to end: STARTTLS and SMTP AUTH on ``kumoq serve``'s listener, under a policy whose
``smtp_server_auth_plain`` handler holds the password database.

The listener has no keys, so the daemon makes a self-signed certificate at start (the client
connects without verification), and ``relay_hosts`` leaves out 127.0.0.1, so only an
authenticated client may relay. The message that went through carries ``ESMTPSA`` and the TLS
details in its ``Received:`` header, and its ``Reception`` record the TLS fields and, in its
meta, the authenticated identity.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.e2e.policies import MAILDIR_QUEUE, policy

pytestmark = pytest.mark.integration

AUTH = """
kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  local passwords = { daniel = 'tiger' }
  return password ~= '' and passwords[authc] == password
end)
"""


def test_starttls_auth_and_relay_through_the_daemon(kumoq):
    daemon = kumoq(policy(MAILDIR_QUEUE, AUTH, listener="relay_hosts = { '192.0.2.0/24' },"))
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    body = b"From: <s@example.com>\r\nSubject: tls\r\n\r\nhello\r\n"
    with daemon.smtp_client() as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AGRhbmllbAB0aWdlcg==")
        assert (code, text) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        client.starttls(context=insecure)
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.mail("s@example.com")
        code, text = client.rcpt("r@example.com")
        assert (code, text[:5]) == (550, b"5.7.1")  # not yet authenticated
        client.rset()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("daniel", "lion")
        assert refused.value.smtp_code == 535
        assert client.login("daniel", "tiger")[0] == 235
        assert client.sendmail("s@example.com", ["r@example.com"], body) == {}

    (path,) = daemon.wait_for_maildir_count(1)
    received = path.read_bytes().split(b"\r\n\r\n")[0].decode()
    assert "with ESMTPSA (TLSv1." in received
    (record,) = daemon.wait_for_records("Reception", 1)
    assert record["tls_protocol_version"].startswith("TLSv1.")
    assert record["tls_cipher"]
    assert record["meta"]["authn_id"] == "daniel"
    assert record["meta"]["authz_id"] == "daniel"
    rejections = daemon.records("Rejection")
    assert [r["response"]["code"] for r in rejections] == [538, 550, 535, 535]
    assert all("tiger" not in str(r) and "AGRhbmll" not in str(r) for r in rejections)
