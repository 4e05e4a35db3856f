"""``start_http_listener``: one HTTP listener with every route module wired in.

The daemon hands in ``HttpServices`` (the reception seam, the policy, the clock) and gets a
started ``HttpListener`` back. The routes come from one module per concern: liveness,
injection, metrics, the OpenAPI document, and the admin API when ``HttpServices.admin`` is set;
a new concern plugs in the same way: a module with a ``routes(...)`` function, and one line
here.

Top of kumoq.http: imports its route modules, kumoq.http.app, .auth, .availability,
kumoq.config.http and kumoq.clock; nothing in kumoq.http imports it. Must not import
kumoq.reception or kumoq.lua (they meet it through ``ReceptionSeam`` and ``PolicyCalls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kumoq.clock import Clock
from kumoq.config.http import HttpListenerConfig
from kumoq.http import admin, inject, liveness, metrics, openapi
from kumoq.http.admin_seam import AdminSeam
from kumoq.http.app import HttpListener, Route
from kumoq.http.auth import Authenticator, PolicyCalls
from kumoq.http.availability import Availability, Readiness
from kumoq.http.inject import Admission, Injector

__all__ = ["HttpServices", "ReceptionSeam", "http_routes", "start_http_listener"]


class ReceptionSeam(Readiness, Admission, Protocol):
    """What the HTTP listener needs of reception (``kumoq.reception.Reception``)."""


@dataclass(frozen=True, slots=True)
class HttpServices:
    """What the routes use: ``reception`` for readiness and admission, ``policy`` to fire
    events, ``clock`` for spool ids, dates and the auth cache; ``admin``, when set, serves
    the admin API (kumoq.http.admin)."""

    reception: ReceptionSeam
    policy: PolicyCalls
    clock: Clock
    admin: AdminSeam | None = None


def http_routes(
    config: HttpListenerConfig, services: HttpServices, availability: Availability
) -> list[Route]:
    """Every route one listener serves (kumoq.http.openapi describes each of them)."""
    injector = Injector(
        admission=services.reception,
        policy=services.policy,
        clock=services.clock,
        availability=availability,
        hostname=config.hostname,
        body_limit=config.request_body_limit,
    )
    routes = [
        *liveness.routes(availability),
        *inject.routes(injector),
        *metrics.routes(),
        *openapi.routes(with_admin=services.admin is not None),
    ]
    if services.admin is not None:
        routes += admin.routes(services.admin, services.clock, config.request_body_limit)
    return routes


async def start_http_listener(
    config: HttpListenerConfig, services: HttpServices, *, reuse_port: bool = False
) -> HttpListener:
    """Bind ``config`` and serve every route; raises ListenerError when binding fails.
    ``reuse_port``: SO_REUSEPORT, for the workers of ``kumoq serve --workers N``."""
    availability = Availability(services.reception)
    routes = http_routes(config, services, availability)
    listener = HttpListener(
        config,
        routes,
        Authenticator(services.policy, services.clock.monotonic),
        availability,
        reuse_port=reuse_port,
    )
    await listener.start()
    return listener
