"""Routes every worker serves: health (live, ready, full) and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from aiohttp import web

from web.health import Check, health_document, overall, run_checks
from web.metrics import exposition

HEALTH_JSON = "application/health+json"
CHECKS_KEY = web.AppKey("checks", Sequence[Check])
VERSION_KEY = web.AppKey("version", str)


async def live(request: web.Request) -> web.Response:
    # Answering at all proves the event loop turns; no dependency is asked (liveness semantics).
    return _health_response({"status": "pass"}, 200)


async def ready(request: web.Request) -> web.Response:
    results = await run_checks(request.app[CHECKS_KEY])
    status = overall(results)
    doc = health_document(results, service_id="atlas", version=request.app[VERSION_KEY])
    return _health_response(doc, 200 if status != "fail" else 503)


async def health(request: web.Request) -> web.Response:
    results = await run_checks(request.app[CHECKS_KEY])
    doc = health_document(results, service_id="atlas", version=request.app[VERSION_KEY])
    return _health_response(doc, 503 if doc["status"] == "fail" else 200)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _health_response(doc: dict[str, object], status: int) -> web.Response:
    response = web.Response(body=orjson.dumps(doc), status=status)
    response.headers["Content-Type"] = HEALTH_JSON
    response.headers["Cache-Control"] = "no-store"
    return response


def install(web_app: web.Application, checks: Sequence[Check], version: str) -> None:
    web_app[CHECKS_KEY] = list(checks)
    web_app[VERSION_KEY] = version
    router = web_app.router
    router.add_get("/health/live", live)
    router.add_get("/health/ready", ready)
    router.add_get("/health", health)
    router.add_get("/metrics", metrics)
