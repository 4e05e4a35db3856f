"""``kumoq traffic-gen --http URL``: the same mail through ``POST /api/inject/v1``.

Each request carries up to ``batch`` recipients and one message text (``To:`` a per-recipient
template), as KumoMTA's ``InjectV1Request``; ``concurrency`` requests are in flight at once over
aiohttp's pooled connections. The answer's ``success_count`` settles that many recipients as
accepted; each entry of ``errors`` (``"<email>: <why>"``) settles one as tempfailed when its
reason carries a 4xx code and permfailed otherwise. A request that fails as a whole (an HTTP
error status, a broken connection, a timeout) settles its recipients as errors. Every
recipient's latency is its request's.

Credentials in the URL (``http://user:pass@host:8000``) become Basic auth.

Imports aiohttp, json and the sibling traffic_run.
"""

from __future__ import annotations

import asyncio
import json
import re
from email.utils import formatdate
from time import perf_counter
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from kumoq.testing.traffic_run import TrafficRun

__all__ = ["http_sender", "inject_url"]

_CODE: Final = re.compile(r"\b([245]\d\d)\b")
_PATH: Final = "/api/inject/v1"


def inject_url(url: str) -> str:
    """``http://host:port`` (or with a trailing ``/``) means its ``/api/inject/v1``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=_PATH)
    return urlunsplit(parts)


async def http_sender(
    run: TrafficRun,
    session: aiohttp.ClientSession,
    url: str,
    *,
    sender: str,
    batch: int,
    limit: float,
) -> None:
    """One request after another until the run has no message left."""
    factory = run.factory
    content = factory.inject_content(formatdate(localtime=True))
    failures = 0
    while True:
        numbers = run.claim(batch)
        if not numbers:
            return
        for _ in numbers:
            await run.pacer.take()
        request = {
            "envelope_sender": sender,
            "recipients": [{"email": factory.recipient(i)} for i in numbers],
            "content": content,
        }
        started = perf_counter()
        try:
            async with session.post(
                url, json=request, timeout=aiohttp.ClientTimeout(total=limit)
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            run.give_back(numbers)
            failures += 1
            if run.cannot_connect(f"cannot connect to {url}: {exc}", failures):
                return
            await asyncio.sleep(min(0.05 * 2**failures, 2.0))
            continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            run.sent += len(numbers)
            run.failed(len(numbers), f"POST {url}: {str(exc) or type(exc).__name__}")
            continue
        failures = 0
        run.connected()
        run.sent += len(numbers)
        latency = perf_counter() - started
        if status != 200:
            run.failed(len(numbers), f"POST {url}: HTTP {status}: {text[:200]}")
            continue
        _settle(run, len(numbers), text, latency)


def _settle(run: TrafficRun, n: int, text: str, latency: float) -> None:
    try:
        answer: Any = json.loads(text)
        success = int(answer["success_count"])
        errors = [str(e) for e in answer.get("errors") or []]
        fail = int(answer.get("fail_count", n - success))
    except (ValueError, KeyError, TypeError):
        run.failed(n, f"not an InjectV1Response: {text[:200]}")
        return
    for _ in range(min(success, n)):
        run.settle(250, "", latency)
    for reason in errors[:fail]:
        why = reason.partition(": ")[2] or reason
        m = _CODE.search(why)
        run.settle(int(m.group(1)) if m else 550, why, latency)
    rest = n - min(success, n) - min(len(errors), fail)
    if rest > 0:
        run.failed(rest, f"the answer accounts for {n - rest} of {n} recipients: {text[:200]}")
