"""``GET /api/check-liveness/v1``: may a load balancer send mail here now?

200 ``{"status": "OK"}`` while mail is accepted; otherwise 503 ``{"error": <reason>}`` with
KumoMTA's reasons: ``waiting for spool startup`` (the spool is still being enumerated),
``shutting down``, or ``storage is too full: ...`` naming the free-space floor crossed.
Public, as in KumoMTA's default ACL: no credentials needed from any peer.

Imports kumoq.http.app, .auth, .availability and .errors; must not import the other route modules.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from kumoq.http.app import Route
from kumoq.http.auth import AuthInfo
from kumoq.http.availability import Availability
from kumoq.http.errors import ApiError

__all__ = ["PATH", "routes"]

PATH: Final = "/api/check-liveness/v1"


def routes(availability: Availability) -> list[Route]:
    async def check_liveness(request: web.Request, auth: AuthInfo) -> web.Response:
        reason = availability.reason()
        if reason is not None:
            raise ApiError(503, reason)
        return web.json_response({"status": "OK"})

    return [Route("GET", PATH, check_liveness, public=True)]
