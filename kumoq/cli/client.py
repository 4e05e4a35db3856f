"""The admin commands' HTTP client: one ``AdminClient`` per run, over urllib (standard library).

The endpoint comes from ``--endpoint``, else ``KUMOQ_ENDPOINT``, else
``http://127.0.0.1:8000`` (kcli's default); ``host:port`` without a scheme means http.
``--user``/``--password`` (or ``KUMOQ_USER``/``KUMOQ_PASSWORD``) add HTTP Basic auth, for a
client outside the listener's ``trusted_hosts``.

Two failures are told apart, because a shell user acts on them differently:

- ``ServerError``: the server answered 4xx/5xx; it carries the status and the ``error`` (and
  ``field``) of kumoq's JSON answer. The command exits ``EXIT_SERVER`` (1).
- ``Unreachable``: no answer at all (refused, timed out, a name that does not resolve). The
  command exits ``EXIT_UNREACHABLE`` (3) with a hint to start kumoq or set the endpoint.

Usage errors are argparse's, ``EXIT_USAGE`` (2). Imports nothing from kumoq.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "DEFAULT_ENDPOINT",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "AdminClient",
    "ServerError",
    "Unreachable",
    "resolve_endpoint",
]

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:8000"
TIMEOUT: Final = 60.0

EXIT_OK: Final = 0
EXIT_SERVER: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


class ServerError(Exception):
    """The server answered ``status`` with ``message`` (its JSON ``error``)."""

    def __init__(
        self, method: str, path: str, status: int, message: str, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        self.field = field

    def __str__(self) -> str:
        field = f" (field: {self.field})" if self.field else ""
        hint = ""
        if self.status == 401:
            hint = "; set --user/--password or KUMOQ_USER/KUMOQ_PASSWORD"
        elif self.status == 404 and self.message.startswith("no such endpoint"):
            hint = "; does this kumoq serve the admin API?"
        return f"{self.method} {self.path}: {self.status}: {self.message}{field}{hint}"


class Unreachable(Exception):
    """No answer from ``endpoint``: ``reason`` says why."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(reason)
        self.endpoint = endpoint
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot reach {self.endpoint}: {self.reason}; is kumoq running? "
            "(set --endpoint or KUMOQ_ENDPOINT)"
        )


def resolve_endpoint(given: str | None) -> str:
    """``given``, else ``KUMOQ_ENDPOINT``, else the default; without a trailing slash."""
    endpoint = given or os.environ.get("KUMOQ_ENDPOINT") or DEFAULT_ENDPOINT
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint.rstrip("/")


def _reason(exc: BaseException) -> str:
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, BaseException):
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return str(text)
    return str(reason)


class AdminClient:
    """``get``/``post``/``delete`` JSON against one endpoint; answers are decoded JSON."""

    def __init__(
        self,
        endpoint: str,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._headers = {"Accept": "application/json"}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body=body)

    def delete(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("DELETE", path, body=body)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request; raises ServerError or Unreachable (see the module docstring)."""
        url = self.endpoint + path
        if params:
            pairs = params.items() if isinstance(params, Mapping) else params
            query = [(k, _param(v)) for k, v in pairs if v is not None]
            if query:
                url += "?" + urllib.parse.urlencode(query)
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._server_error(method, path, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(self.endpoint, _reason(exc)) from None
        return _decode(method, path, raw)

    def _server_error(self, method: str, path: str, exc: urllib.error.HTTPError) -> ServerError:
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        finally:
            exc.close()
        message, field = str(exc.reason or ""), None
        try:
            answer = json.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace").strip()
            message = text[:200] or message
        else:
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                message = answer["error"]
                field = answer.get("field") if isinstance(answer.get("field"), str) else None
        return ServerError(method, path, exc.code, message or f"HTTP {exc.code}", field)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(method: str, path: str, raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        if path.startswith("/metrics") and not path.endswith(".json"):
            return text
        raise ServerError(method, path, 200, f"the answer is not JSON: {text[:80]!r}") from None
