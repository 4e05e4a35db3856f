"""Reading a JSON request body: content type, Content-Encoding, the size limit, the parse.

``read_json(request, limit)`` answers (by raising ``ApiError``):

- 415 unless the body is declared ``application/json`` (or ``application/*+json``), as
  KumoMTA's JSON extractor requires;
- 415 for a ``Content-Encoding`` other than ``identity``, ``gzip``, ``x-gzip`` or ``deflate``;
- 413 once the body, after decompression, passes ``limit`` bytes (KumoMTA's
  ``request_body_limit`` semantics). Decompression is bounded: at most ``limit + 1`` bytes
  are ever inflated, so a small compressed bomb costs no more than a plain body;
- 400 for a compressed body that does not decompress, and for malformed JSON (naming the line
  and column).

The listener runs aiohttp with ``auto_decompress=False`` so that this module sees the bytes as
sent. A body read once (kumoq.http.fanout reads it to forward it to the other workers) is kept
in the request under ``BODY_KEY``, and ``read_body`` answers that. Imports kumoq.http.errors
only; must not import the other kumoq.http modules.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Final

from aiohttp import web

from kumoq.http.errors import ApiError

__all__ = ["BODY_KEY", "read_body", "read_json"]

#: Where the request keeps a body already read and decompressed.
BODY_KEY: Final = web.RequestKey("kumoq_body", bytes)
_CHUNK: Final = 64 * 1024
_GZIP: Final = 16 + zlib.MAX_WBITS
_ZLIB: Final = zlib.MAX_WBITS
_RAW: Final = -zlib.MAX_WBITS


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"Failed to buffer the request body: length limit exceeded ({limit} bytes)"
    )


class _Inflater:
    """Bounded decompression of one body; ``wbits`` None means identity."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.out = bytearray()
        self._wbits: int | None = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}.get(encoding)
        self._d: Any = None

    def feed(self, chunk: bytes) -> None:
        if self._wbits is None:
            self.out += chunk
        else:
            if self._d is None:
                # "deflate" is zlib-wrapped (RFC 9110), but some clients send raw deflate.
                raw = self._wbits == _ZLIB and not _zlib_header(chunk)
                self._d = zlib.decompressobj(_RAW if raw else self._wbits)
            data = chunk
            try:
                while data:
                    if self._d.eof:
                        raise ApiError(400, f"unexpected data after the {self.encoding} body")
                    self.out += self._d.decompress(data, self.limit + 1 - len(self.out))
                    if len(self.out) > self.limit:
                        raise _too_large(self.limit)
                    data = self._d.unconsumed_tail
                if self._d.unused_data:
                    raise ApiError(400, f"unexpected data after the {self.encoding} body")
            except zlib.error as exc:
                raise self._corrupt(exc) from None
        if len(self.out) > self.limit:
            raise _too_large(self.limit)

    def finish(self) -> bytes:
        if self._d is not None:
            try:
                self.out += self._d.flush()
            except zlib.error as exc:
                raise self._corrupt(exc) from None
            if not self._d.eof:
                raise ApiError(400, f"the {self.encoding} request body is truncated")
            if len(self.out) > self.limit:
                raise _too_large(self.limit)
        return bytes(self.out)

    def _corrupt(self, exc: zlib.error) -> ApiError:
        return ApiError(400, f"the request body does not decode as {self.encoding}: {exc}")


def _zlib_header(chunk: bytes) -> bool:
    return len(chunk) >= 2 and chunk[0] & 0x0F == 8 and (chunk[0] << 8 | chunk[1]) % 31 == 0


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, decompressed per ``Content-Encoding``, at most ``limit`` bytes (else 413)."""
    if BODY_KEY in request:
        return request[BODY_KEY]
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        raise ApiError(
            415, f"unsupported Content-Encoding {encoding!r}; use gzip or deflate, or none"
        )
    plain = encoding in ("identity", "")
    if plain and request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    inflater = _Inflater("identity" if plain else encoding, limit)
    # A compressed body is never much larger than what it inflates to.
    wire_limit = limit if plain else limit + limit // 16 + 1024
    wire = 0
    while chunk := await request.content.read(_CHUNK):
        wire += len(chunk)
        if wire > wire_limit:
            raise _too_large(limit)
        inflater.feed(chunk)
    body = inflater.finish()
    request[BODY_KEY] = body
    return body


async def read_json(request: web.Request, limit: int) -> Any:
    """The request's JSON document (see the module docstring for the answers on error)."""
    ctype = request.content_type.lower()
    if not (ctype == "application/json" or (ctype.startswith("application/") and
                                            ctype.endswith("+json"))):  # fmt: skip
        raise ApiError(
            415, f"expected a request with Content-Type: application/json, got {ctype!r}"
        )
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"malformed JSON: the body is not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
