"""`GET /v1/ops/lag`: the worker's latest consumer-lag reading (streams/lag.py) as JSON."""

from __future__ import annotations

import orjson
from aiohttp import web

from streams.lag import LagMonitor
from web.problems import problem_response


def install_lag(router: web.UrlDispatcher, monitor: LagMonitor) -> None:
    async def get_lag(request: web.Request) -> web.Response:
        report = monitor.report
        if report is None:
            return problem_response(
                503,
                slug="unavailable",
                detail="consumer lag not measured yet",
                instance=request.path,
                headers={"Retry-After": "1"},
            )
        return web.Response(body=orjson.dumps(report.as_json()), content_type="application/json")

    router.add_get("/v1/ops/lag", get_lag)
