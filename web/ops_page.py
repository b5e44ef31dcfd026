"""The operator page: `GET /ops` and the document it polls, `GET /ops/status.json`.

Both are open like /health and /metrics (web/auth.py protects only `/v1/`); the document holds
no secrets (web/ops_status.py). The page and its script and style are served from this package
(web/ops_assets.py) and load nothing from elsewhere; the content security policy says so.
"""

from __future__ import annotations

import re
from typing import Protocol

import orjson
from aiohttp import web

from streams.settings import Settings
from web.ops_assets import PAGE, SCRIPT, STYLE
from web.ops_status import BacklogSource, BreakerSource, LagSource, OpsStatus, RelaySource

PAGE_PATH = "/ops"
STATUS_PATH = "/ops/status.json"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "ops.js": ("text/javascript", SCRIPT),
    "ops.css": ("text/css", STYLE),
}


class _HasBreakers(Protocol):
    @property
    def breakers(self) -> BreakerSource: ...


class OpsSources(Protocol):
    """What the page reads from the worker's app (`streams.app.AtlasApp`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def lag_monitor(self) -> LagSource: ...
    @property
    def backlog(self) -> BacklogSource: ...
    @property
    def relay(self) -> RelaySource: ...
    @property
    def resources(self) -> _HasBreakers: ...


class OpsPage:
    def __init__(self, status: OpsStatus) -> None:
        self.status = status

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP},
        )

    async def asset(self, request: web.Request) -> web.Response:
        found = ASSETS.get(request.match_info["asset"])
        if found is None:
            raise web.HTTPNotFound()
        content_type, text = found
        return web.Response(
            text=text, content_type=content_type, headers={"Cache-Control": "no-cache"}
        )

    async def status_json(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.status.document()),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_get(PAGE_PATH, self.page)
        router.add_get(STATUS_PATH, self.status_json)
        names = "|".join(re.escape(name) for name in ASSETS)
        router.add_get(PAGE_PATH + f"/{{asset:{names}}}", self.asset)


def install_ops_page(router: web.UrlDispatcher, app: OpsSources) -> None:
    """Serve `/ops`, its script and style, and `/ops/status.json` from `app`'s services."""
    status = OpsStatus(
        lag=app.lag_monitor,
        backlog=app.backlog,
        backlog_limit=app.settings.outbox_backlog_limit,
        breakers=app.resources.breakers,
        relay=app.relay,
    )
    OpsPage(status).install(router)
