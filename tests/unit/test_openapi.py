"""The OpenAPI document and the docs pages, without services."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from streams.settings import Settings
from web import server, writes
from web.docs import ASSETS, Docs, sidecar_static
from web.middleware import MIDDLEWARES
from web.openapi import build_document
from web.ops import install_lag
from web.ops_page import OpsPage
from web.reads import TableReads
from web.schemas import EmptyBody, OpenAccountBody, TransferBody
from web.writes import WriteViews

V1_REFUSALS = {"401", "403", "429", "503", "504"}
WRITE_REFUSALS = {"400", "409", "413", "415", "422"}


def atlas_app() -> web.Application:
    """Every route a worker installs, with handlers that are never called here."""
    app = web.Application(middlewares=MIDDLEWARES)
    server.install(app, [], "9.9.9")
    TableReads(SimpleNamespace(ledger_tables=None)).install(app.router)
    WriteViews(Settings(_env_file=None), lambda: None, lambda _: None).install(app.router)
    Docs("9.9.9").install(app.router)
    install_lag(app.router, SimpleNamespace(group="g", groups=["g"], reports={}))  # type: ignore[arg-type]
    OpsPage(None).install(app.router)  # type: ignore[arg-type]
    return app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document("9.9.9", ASSETS)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == "9.9.9"
    validate(document)


def test_every_installed_route_is_documented_and_nothing_else() -> None:
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in atlas_app().router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(m, p) for m, p, _ in operations(build_document("9.9.9", ASSETS))}
    assert routes == documented


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(document))
    assert found
    for ref in found:
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]


def test_request_bodies_are_the_handlers_models(document: dict[str, Any]) -> None:
    assert writes.OpenAccountBody is OpenAccountBody
    assert writes.TransferBody is TransferBody
    assert writes.EmptyBody is EmptyBody
    schemas = document["components"]["schemas"]
    for model in (OpenAccountBody, TransferBody, EmptyBody):
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)
        assert schemas[model.__name__] == expected
    body = document["paths"]["/v1/transfers"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TransferBody"
    }
    freeze = document["paths"]["/v1/accounts/{account_id}/freeze"]["post"]["requestBody"]
    assert freeze["required"] is False


def test_v1_is_bearer_secured_and_everything_else_is_open(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert "security" not in document  # no global requirement: open routes stay open
    for method, path, operation in operations(document):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            assert operation["responses"].keys() >= V1_REFUSALS, (method, path)
        else:
            assert "security" not in operation, (method, path)
            assert not {"401", "403", "429"} & operation["responses"].keys(), (method, path)


def test_every_post_documents_its_key_and_answers(document: dict[str, Any]) -> None:
    key = document["components"]["parameters"]["IdempotencyKey"]
    assert key["in"] == "header" and key["required"] is True
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    posts = [(p, op) for m, p, op in operations(document) if m == "post"]
    assert len(posts) == 5
    for path, operation in posts:
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
        responses = operation["responses"]
        assert {"202", *WRITE_REFUSALS, *V1_REFUSALS} <= responses.keys(), path
        accepted = responses["202"]
        assert {"Location", "Idempotent-Replayed"} <= accepted["headers"].keys()
        assert "application/json" in accepted["content"]
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (path, status)
        assert "Retry-After" in responses["429"]["headers"]
        assert "WWW-Authenticate" in responses["401"]["headers"]


def test_reads_document_404_and_the_wait_parameter(document: dict[str, Any]) -> None:
    account = document["paths"]["/v1/accounts/{account_id}"]["get"]
    transfer = document["paths"]["/v1/transfers/{transfer_id}"]["get"]
    for operation in (account, transfer):
        assert {"200", "404"} <= operation["responses"].keys()
    wait = next(p for p in transfer["parameters"] if p["name"] == "wait")
    assert wait["in"] == "query" and wait["schema"]["maximum"] == 30
    assert {p["name"] for p in account["parameters"]} == {"account_id"}


def test_the_sidecar_is_found_without_importing_django() -> None:
    code = (
        "import sys\n"
        "from web.docs import sidecar_static\n"
        "assert (sidecar_static() / 'swagger-ui-dist' / 'swagger-ui-bundle.js').is_file()\n"
        "assert 'django' not in sys.modules and 'drf_spectacular_sidecar' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert sidecar_static().is_dir()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(atlas_app())) as c:
        yield c


async def test_pages_and_assets_are_served_locally(
    client: TestClient[web.Request, web.Application],
) -> None:
    spec = await client.get("/openapi.json")
    assert spec.status == 200 and spec.content_type == "application/json"
    assert (await spec.json())["openapi"] == "3.1.0"
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = await client.get(page)
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
        assert f'src="/docs/assets/{script}"' in html
        assert "http://" not in html and "https://" not in html
    for name, asset in ASSETS.items():
        r = await client.get(f"/docs/assets/{name}")
        assert r.status == 200, name
        assert r.headers["Content-Type"] == asset.content_type
        assert len(await r.read()) > 0
    missing = await client.get("/docs/assets/nope.js")
    assert missing.status == 404 and missing.content_type == "application/problem+json"
