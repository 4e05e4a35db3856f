"""``GET /api/openapi.json``: the document names exactly the routes a listener registers (so the
two cannot drift), is OpenAPI-shaped, describes each admin request with the keys the route
accepts, and is served behind authentication."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from kumoq.clock import FakeClock
from kumoq.config.http import HttpListenerConfig
from kumoq.http import admin_schema
from kumoq.http.availability import Availability
from kumoq.http.openapi import OPERATIONS, PATH, document
from kumoq.http.server import HttpServices, http_routes
from tests.unit.admin_support import AdminRig, AdminRigs, FakeAdmin, _Policy, _Reception

METHODS = {"get", "post", "put", "delete", "patch", "head", "options"}


@pytest.fixture
async def admin_rig() -> AsyncIterator[Callable[..., Awaitable[AdminRig]]]:
    async with AdminRigs() as rigs:
        yield rigs.start


def registered(with_admin: bool) -> set[tuple[str, str]]:
    cfg = HttpListenerConfig.from_mapping({"listen": "127.0.0.1:0"})
    reception = _Reception()
    services = HttpServices(reception, _Policy(), FakeClock(),
                            admin=FakeAdmin() if with_admin else None)  # fmt: skip
    return {(r.method, r.path) for r in http_routes(cfg, services, Availability(reception))}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}


@pytest.mark.parametrize("with_admin", [True, False])
def test_the_document_names_exactly_the_registered_routes(with_admin):
    routes = registered(with_admin)
    assert documented(document(with_admin)) == routes
    assert ("GET", PATH) in routes
    assert ("GET", "/api/check-liveness/v1") in routes
    assert any(path.startswith("/api/admin/") for _, path in routes) is with_admin


def test_the_document_is_openapi_shaped():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "kumoq"
    assert doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["basic"] == {"type": "http", "scheme": "basic"}
    operation_ids = []
    for path, operations in doc["paths"].items():
        assert path.startswith("/")
        for method, op in operations.items():
            assert method in METHODS
            assert op["summary"]
            operation_ids.append(op["operationId"])
            assert "example" in op["responses"]["200"]["content"].popitem()[1]
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status)
                assert response["description"]
            for param in op.get("parameters", []):
                assert param["in"] == "query"
                assert {"name", "required", "schema"} <= param.keys()
            if "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                assert body["type"] == "object"
                assert set(body.get("required", [])) <= body["properties"].keys()
                assert "400" in op["responses"]
    assert len(operation_ids) == len(set(operation_ids))
    assert doc["paths"]["/api/check-liveness/v1"]["get"]["security"] == []
    assert "401" in doc["paths"]["/api/admin/bounce/v1"]["post"]["responses"]


@pytest.mark.parametrize(
    ("method", "path", "fields"),
    [
        ("post", "/api/admin/bounce/v1", admin_schema.BOUNCE),
        ("post", "/api/admin/rebind/v1", admin_schema.REBIND),
        ("delete", "/api/admin/suspend/v1", admin_schema.CANCEL),
        ("post", "/api/admin/dead-letters/purge/v1", admin_schema.DEAD_LETTER_SELECT),
    ],
)
def test_request_bodies_list_the_keys_the_route_accepts(method, path, fields):
    op = document()["paths"][path][method]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {f.name for f in fields}
    assert set(body.get("required", [])) == {f.name for f in fields if f.required}
    assert body["additionalProperties"] is False


def test_kumomta_request_keys_are_kumomtas():
    doc = document()["paths"]
    bounce = doc["/api/admin/bounce/v1"]["post"]["requestBody"]["content"]["application/json"]
    assert set(bounce["schema"]["properties"]) == {
        "campaign", "domain", "duration", "expires", "queue_names", "reason",
        "routing_domain", "suppress_logging", "tenant",
    }  # fmt: skip
    params = doc["/api/admin/inspect-sched-q/v1"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["queue_name", "want_body", "limit"]
    assert len(OPERATIONS) == sum(len(ops) for ops in doc.values())


@pytest.mark.integration
async def test_served_behind_auth(admin_rig):
    rig = await admin_rig()
    async with aiohttp.ClientSession() as client, client.get(rig.url + PATH) as response:
        assert response.status == 200
        doc = await response.json()
    assert documented(doc) == documented(document(True))
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as outside:
        async with outside.get(rig.url + PATH) as response:
            assert response.status == 401
        token = base64.b64encode(b"daniel:tiger").decode()
        async with outside.get(
            rig.url + PATH, headers={"Authorization": f"Basic {token}"}
        ) as response:
            assert response.status == 200
