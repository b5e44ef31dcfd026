"""`GET /v1/ops/lag[?group=G]`: the worker's latest consumer-lag reading (streams/lag.py).

Without `group`, the worker's own group; with it, one of the groups it watches
(`ATLAS_LAG_WATCH_GROUPS`).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from streams.lag import LagMonitor
from web.problems import problem_response


def install_lag(router: web.UrlDispatcher, monitor: LagMonitor) -> None:
    async def get_lag(request: web.Request) -> web.Response:
        unknown = set(request.query) - {"group"}
        if unknown:
            return problem_response(
                400,
                slug="invalid-query",
                detail=f"unknown query parameters: {', '.join(sorted(unknown))}",
                instance=request.path,
            )
        group = request.query.get("group", monitor.group)
        if group not in monitor.groups:
            return problem_response(
                404,
                slug="group-not-watched",
                detail=f"this worker watches {', '.join(monitor.groups)}",
                instance=request.path,
            )
        report = monitor.reports.get(group)
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
