"""``start_http_listener``: one HTTP listener with every route module wired in.

The daemon hands in ``HttpServices`` (the reception seam, the policy, the clock) and gets a
started ``HttpListener`` back. The routes come from one module per concern: liveness,
injection, metrics, the OpenAPI document, and the admin API when ``HttpServices.admin`` is set;
a new concern plugs in the same way: a module with a ``routes(...)`` function, and one line
here.

With ``kumoq serve --workers N`` (``HttpServices.slot``), the admin and metrics routes of a
public listener answer for every worker (kumoq.http.fanout), and ``start_worker_listener``
starts this worker's private listener on 127.0.0.1 (an ephemeral port; the metrics and admin
routes, for the other workers only: ``X-Kumoq-Worker-Token``), registered in the slot's
registry while it serves.

Top of kumoq.http: imports its route modules, kumoq.http.fanout, .app, .auth, .availability,
kumoq.config.http, kumoq.clock and kumoq.workers; nothing in kumoq.http imports it. Must not import
kumoq.reception or kumoq.lua (they meet it through ``ReceptionSeam`` and ``PolicyCalls``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol

from kumoq.clock import Clock
from kumoq.config.http import HttpListenerConfig
from kumoq.http import admin, inject, liveness, metrics, openapi
from kumoq.http.admin_seam import AdminSeam
from kumoq.http.app import HttpListener, Route
from kumoq.http.auth import Authenticator, PolicyCalls
from kumoq.http.availability import Availability, Readiness
from kumoq.http.fanout import Fanout
from kumoq.http.inject import Admission, Injector
from kumoq.workers import WorkerSlot

__all__ = [
    "HttpServices",
    "ReceptionSeam",
    "WorkerListener",
    "http_routes",
    "start_http_listener",
    "start_worker_listener",
]

log = logging.getLogger("kumoq.http")


class ReceptionSeam(Readiness, Admission, Protocol):
    """What the HTTP listener needs of reception (``kumoq.reception.Reception``)."""


@dataclass(frozen=True, slots=True)
class HttpServices:
    """What the routes use: ``reception`` for readiness and admission, ``policy`` to fire
    events, ``clock`` for spool ids, dates and the auth cache; ``admin``, when set, serves
    the admin API (kumoq.http.admin); ``slot``: this worker's place when there are several
    (kumoq.workers)."""

    reception: ReceptionSeam
    policy: PolicyCalls
    clock: Clock
    admin: AdminSeam | None = None
    slot: WorkerSlot | None = None


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
    if services.slot is not None and services.slot.count > 1 and services.slot.token:
        routes = Fanout(services.slot, config.request_body_limit).wrap(routes)
    listener = HttpListener(
        config,
        routes,
        Authenticator(services.policy, services.clock.monotonic),
        availability,
        reuse_port=reuse_port,
    )
    await listener.start()
    return listener


class WorkerListener(HttpListener):
    """A worker's private listener: published in its slot's registry while it serves."""

    def __init__(
        self,
        config: HttpListenerConfig,
        routes: list[Route],
        authenticator: Authenticator,
        availability: Availability,
        *,
        slot: WorkerSlot,
    ) -> None:
        super().__init__(config, routes, authenticator, availability, worker_token=slot.token)
        self.slot = slot

    async def start(self) -> None:
        await super().start()
        assert self.address is not None
        self.slot.register(f"http://127.0.0.1:{self.address[1]}")

    async def close(self) -> None:
        self.slot.unregister()
        await super().close()


async def start_worker_listener(
    config: HttpListenerConfig, services: HttpServices, slot: WorkerSlot
) -> HttpListener | None:
    """This worker's private listener (see the module docstring), serving what ``config``'s
    public listener serves but injection; None for a lone worker, and when the run has no
    token (nothing could reach it)."""
    if slot.count < 2:
        return None
    if not slot.token:
        log.warning("worker %d: KUMOQ_WORKERS_TOKEN is not set: the admin API and metrics "
                    "answer for this worker alone", slot.index)  # fmt: skip
        return None
    private = dataclasses.replace(config, listen="127.0.0.1:0", use_tls=False)
    availability = Availability(services.reception)
    routes = [*metrics.routes()]
    if services.admin is not None:
        routes += admin.routes(services.admin, services.clock, config.request_body_limit)
    listener = WorkerListener(
        private,
        routes,
        Authenticator(services.policy, services.clock.monotonic),
        availability,
        slot=slot,
    )
    await listener.start()
    return listener
