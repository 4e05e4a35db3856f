"""The HTTP API's error answers: every 4xx/5xx carries a JSON body that names what was wrong.

``ApiError(status, message, field=...)`` is raised anywhere under a handler; the listener's
error middleware (kumoq.http.app) turns it into ``{"error": message, "field": field}`` with
that status. ``json_error`` builds the same answer directly.

Bottom of kumoq.http: imports only aiohttp; must not import any other kumoq.http module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

__all__ = ["INTERNAL_ERROR", "ApiError", "json_error"]

#: What a client is told about a failure it did not cause; the details go to the log only.
INTERNAL_ERROR: Final = "internal error; the details are in the server log"


class ApiError(Exception):
    """An answer other than 2xx: ``status``, a ``message`` for the client, optionally the
    request ``field`` at fault and extra response ``headers``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_error(self.status, self.message, field=self.field, headers=self.headers)


def json_error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``{"error": message}`` (and ``"field"`` when given) with ``status``."""
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)
