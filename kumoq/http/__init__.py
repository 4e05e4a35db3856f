"""The HTTP listener: ``kumo.start_http_listener``, its auth, and its endpoints.

One module per concept, top to bottom (the ``http modules`` contract in pyproject.toml):
``server`` (wiring), ``fanout`` (with ``kumoq serve --workers N``, one answer for every
worker) and ``openapi`` (the document of every route), the route modules ``admin``,
``inject``, ``liveness`` and ``metrics``, then ``admin_schema`` and ``inject_build``
(templates, MIME), ``inject_schema`` (the request), ``app`` (the aiohttp listener and its
middleware), ``auth``, ``availability`` and ``body``, and ``admin_seam`` (what the admin routes
need of the daemon, implemented by kumoq.admin), ``errors`` and the pure merges of the
workers' answers, ``merge_admin`` and ``merge_metrics``.

The package sits between the daemon and the packages it reports on (the ``kumoq layers``
contract): it may import what lies below reception (scheduler, spool, logs, message, config,
metrics, errors, clock). It must not import kumoq.daemon, kumoq.declarations or kumoq.cli, and
it meets reception and the Lua policy only through the Protocols it owns (``ReceptionSeam``,
``PolicyCalls``), never by importing kumoq.reception or kumoq.lua.
"""

from kumoq.http.app import HttpListener
from kumoq.http.server import HttpServices, start_http_listener, start_worker_listener

__all__ = ["HttpListener", "HttpServices", "start_http_listener", "start_worker_listener"]
