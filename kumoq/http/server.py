"""``start_http_listener``: one HTTP listener with every route module wired in.

The daemon hands in ``HttpServices`` (the reception seam, the policy, the clock) and gets a
started ``HttpListener`` back. The routes come from one module per concern: liveness,
injection and metrics today; the admin API, dead letters and the CLI's endpoints plug in the
same way: a module with a ``routes(...)`` function, and one line here.

Top of kumoq.http: imports its route modules, kumoq.http.app, .auth, .availability,
kumoq.config.http and kumoq.clock; nothing in kumoq.http imports it. Must not import
kumoq.reception or kumoq.lua (they meet it through ``ReceptionSeam`` and ``PolicyCalls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kumoq.clock import Clock
from kumoq.config.http import HttpListenerConfig
from kumoq.http import inject, liveness, metrics
from kumoq.http.app import HttpListener
from kumoq.http.auth import Authenticator, PolicyCalls
from kumoq.http.availability import Availability, Readiness
from kumoq.http.inject import Admission, Injector

__all__ = ["HttpServices", "ReceptionSeam", "start_http_listener"]


class ReceptionSeam(Readiness, Admission, Protocol):
    """What the HTTP listener needs of reception (``kumoq.reception.Reception``)."""


@dataclass(frozen=True, slots=True)
class HttpServices:
    """What the routes use: ``reception`` for readiness and admission, ``policy`` to fire
    events, ``clock`` for spool ids, dates and the auth cache."""

    reception: ReceptionSeam
    policy: PolicyCalls
    clock: Clock


async def start_http_listener(config: HttpListenerConfig, services: HttpServices) -> HttpListener:
    """Bind ``config`` and serve every route; raises ListenerError when binding fails."""
    availability = Availability(services.reception)
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
    ]
    listener = HttpListener(
        config, routes, Authenticator(services.policy, services.clock.monotonic), availability
    )
    await listener.start()
    return listener
