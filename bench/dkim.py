"""DKIM signing cost per message: ``python -m bench.dkim``.

Signs a 2 KB message (``--size``) ``--n`` times with kumoq.dkim for RSA-2048 and ed25519 in both
canonicalizations and prints the median cost per message over 5 rounds; then the same through a
policy (``kumo.dkim.rsa_sha256_signer{...}`` called per message, as KumoMTA's examples do, so
the signer comes from the ttl cache, then ``msg:dkim_sign``); then dkimpy's own signing, when it
is installed, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kumoq.dkim import PrivateKey, Signer
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id


def message(size: int) -> bytes:
    head = (
        b"From: Sender <sender@example.com>\r\nTo: rcpt@example.net\r\n"
        b"Subject: a message of the benchmark\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def per_call_us(fn: Callable[[], object], n: int) -> float:
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(rounds)


def pem(key: PrivateKey) -> bytes:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    data = message(args.size)
    keys: dict[str, PrivateKey] = {
        "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    headers = ("From", "To", "Subject", "Date", "Message-ID")
    print(f"{len(data)}-byte message, {args.n} signatures per round, median of 5 rounds")
    for name, key in keys.items():
        for canon in ("relaxed", "simple"):
            signer = Signer(key, "example.com", "s1", headers, canon, canon, over_sign=True)
            us = per_call_us(lambda s=signer: s.sign([data], 1_800_000_000), args.n)  # type: ignore[misc]
            print(f"kumoq.dkim {name:8} {canon:7}/{canon:7} {us:8.1f} µs")

    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "k.pem"
        key_file.write_bytes(pem(keys["rsa-2048"]))
        policy = Path(tmp) / "init.lua"
        policy.write_text(
            "kumo.on('sign', function(msg)\n"
            "  msg:dkim_sign(kumo.dkim.rsa_sha256_signer {\n"
            "    domain = 'example.com', selector = 's1', over_sign = true,\n"
            "    headers = {'From', 'To', 'Subject', 'Date', 'Message-ID'},\n"
            f"    key = '{key_file}',\n"
            "  })\n"
            "end)\n"
        )
        events = PolicyEvents(PolicyRuntime(policy))
        sender = EnvelopeAddress.parse("sender@example.com")

        def through_policy() -> None:
            msg = Message(id=new_spool_id(1.0), sender=sender, recipients=[sender], data=data)
            events.call("sign", msg)

        us = per_call_us(through_policy, args.n)
        print(f"policy     rsa-2048 signer{{}} + msg:dkim_sign (relaxed)  {us:8.1f} µs")

    try:
        import dkim  # dkimpy: the tests' verifier
    except ImportError:
        return
    rsa_pem = pem(keys["rsa-2048"])
    names = [h.encode() for h in headers]
    us = per_call_us(
        lambda: dkim.sign(data, b"s1", b"example.com", rsa_pem, include_headers=names),
        max(args.n // 10, 10),
    )
    print(f"dkimpy     rsa-2048 relaxed/simple  {us:8.1f} µs")


if __name__ == "__main__":
    main()
