"""The ESMTP listener's TLS: its server ``ssl.SSLContext``, the self-signed certificate made
when no keys are configured, and what a finished handshake puts into the connection meta.

``server_context(config)`` is built once, when the listener starts (``start_esmtp_listener``),
so a bad key fails the start with a ``ListenerError`` that names it. The certificate and key
come from ``tls_certificate`` and ``tls_private_key``: a PEM file path, or ``{key_data =
'<PEM>'}``. Without them, as KumoMTA does, a self-signed certificate for ``hostname`` is made
(an ECDSA P-256 key, valid for a year): with the ``cryptography`` package, or else the
``openssl`` command; with neither the start fails saying so. It is made once per process and
host name. TLS 1.2 is the oldest version offered. ``tls_required_client_ca`` (a PEM bundle)
asks clients for a certificate: one issued by those CAs is verified and its subject recorded;
one that does not verify fails the handshake; a client without one is served all the same.

``tls_meta(ssl_object)`` gives KumoMTA's connection meta for a finished handshake:
``tls_protocol_version`` (``TLSv1.3``), ``tls_cipher`` (``TLS_AES_256_GCM_SHA384``) and, for a
verified client certificate, ``tls_peer_subject_name`` (``["C=US", "CN=client.example"]``).

Imports: ssl, the standard library, kumoq.config.listener, kumoq.errors; ``cryptography``
when it is installed. Must not import the rest of kumoq.smtp.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ListenerError

__all__ = ["self_signed", "server_context", "tls_meta"]

log = logging.getLogger("kumoq.smtp.server")

VALIDITY: Final = timedelta(days=365)
# OpenSSL's short names for the attributes Python's ``getpeercert()`` spells out.
_SHORT_NAMES: Final = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "domainComponent": "DC",
    "userId": "UID",
}


def server_context(config: EsmtpListenerConfig) -> ssl.SSLContext:
    """The context STARTTLS hands to ``loop.start_tls`` for ``config``'s listener.

    Raises ListenerError when a key cannot be read or used, or no self-signed certificate
    can be made."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    where = f"esmtp listener {config.listen}"
    with tempfile.TemporaryDirectory(prefix="kumoq-tls-") as scratch:  # mode 0700
        if config.tls_certificate is None or config.tls_private_key is None:
            log.info(
                "%s: no tls_certificate configured: self-signed for %s", where, config.hostname
            )
            cert, key = self_signed(config.hostname)
            certfile = _write(scratch, "cert.pem", cert)
            keyfile = _write(scratch, "key.pem", key)
        else:
            certfile = _pem_file(where, "tls_certificate", config.tls_certificate, scratch)
            keyfile = _pem_file(where, "tls_private_key", config.tls_private_key, scratch)
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(
                f"{where}: cannot use tls_certificate {_shown(config.tls_certificate)} with "
                f"tls_private_key {_shown(config.tls_private_key)}: {exc}"
            ) from None
        ca = config.tls_required_client_ca
        if ca is not None:
            try:
                context.load_verify_locations(
                    _pem_file(where, "tls_required_client_ca", ca, scratch)
                )
            except (OSError, ssl.SSLError) as exc:
                raise ListenerError(f"{where}: cannot use tls_required_client_ca: {exc}") from None
            context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _shown(source: str | dict[str, Any] | None) -> str:
    """A key source as it may appear in an error: a path, never inline key data."""
    return repr(source) if not isinstance(source, dict) else "{key_data=...}"


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_file(where: str, key: str, source: str | dict[str, Any], scratch: str) -> str:
    """A file holding ``source``'s PEM: its own path, or ``key_data`` written to ``scratch``."""
    if isinstance(source, str):
        return source
    data = source.get("key_data")
    if set(source) != {"key_data"} or not isinstance(data, str):
        raise ListenerError(
            f"{where}: {key}: only a PEM file path or {{key_data='<PEM>'}} is supported, "
            f"got a table with keys {sorted(source)}"
        )
    return _write(scratch, f"{key}.pem", data.encode())


@lru_cache(maxsize=8)
def self_signed(hostname: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``hostname`` and its key, both PEM; made once per process.

    Raises ListenerError when neither ``cryptography`` nor ``openssl`` is available."""
    try:
        return _with_cryptography(hostname)
    except ImportError:
        pass
    openssl = shutil.which("openssl")
    if openssl is not None:
        return _with_openssl(openssl, hostname)
    raise ListenerError(
        "esmtp listener: no tls_certificate and tls_private_key are configured, and a "
        "self-signed certificate cannot be made: install the 'cryptography' package or the "
        "'openssl' command, or configure tls_certificate and tls_private_key"
    )


def _with_cryptography(hostname: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.now(UTC)
    alt: x509.GeneralName
    try:
        alt = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _with_openssl(openssl: str, hostname: str) -> tuple[bytes, bytes]:
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        alt = f"DNS:{hostname}"
    else:
        alt = f"IP:{ip}"
    with tempfile.TemporaryDirectory(prefix="kumoq-tls-") as scratch:
        certfile, keyfile = os.path.join(scratch, "cert.pem"), os.path.join(scratch, "key.pem")
        command = [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", str(VALIDITY.days), "-subj", f"/CN={hostname[:64]}",
            "-addext", f"subjectAltName={alt}", "-keyout", keyfile, "-out", certfile,
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            with open(certfile, "rb") as cert, open(keyfile, "rb") as key:
                return cert.read(), key.read()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise ListenerError(
                f"esmtp listener: making a self-signed certificate with {openssl} failed: "
                f"{exc} {detail.decode(errors='replace').strip()}".rstrip()
            ) from None


def tls_meta(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any]:
    """The connection meta of a finished handshake (see the module docstring)."""
    if ssl_object is None:
        return {}
    meta: dict[str, Any] = {}
    version = ssl_object.version()
    if version:
        meta["tls_protocol_version"] = version
    cipher = ssl_object.cipher()
    if cipher:
        meta["tls_cipher"] = cipher[0]
    peer = ssl_object.getpeercert()
    subject: Any = peer.get("subject") if peer else None  # ((("commonName", "x"),), ...)
    if subject:
        meta["tls_peer_subject_name"] = [
            f"{_SHORT_NAMES.get(name, name)}={value}" for rdn in subject for name, value in rdn
        ]
    return meta
