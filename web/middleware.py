"""aiohttp middlewares, outermost first: correlation id, RED metrics and access log, problems.

Order matters: the correlation id is bound before anything logs, and the metrics middleware
sees the final status of every request because the problem middleware inside it turns every
exception into a response.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from streams.logs import get_logger
from web.metrics import DEADLINE_EXCEEDED, HTTP_DURATION, HTTP_REQUESTS
from web.problems import problem_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORRELATION_HEADER = "X-Correlation-ID"
_INBOUND_HEADERS = (CORRELATION_HEADER, "X-Request-ID")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

CORRELATION_ID = web.RequestKey("correlation_id", str)

log = get_logger("atlas.http")
_access_log = logging.getLogger("atlas.http")  # asked first: a dropped line still costs ~2 us


def correlation_id_of(request: web.Request) -> str:
    """The caller's id when it is safe to echo and log, else a fresh one."""
    for header in _INBOUND_HEADERS:
        value = request.headers.get(header)
        if value and _VALID_ID.match(value):
            return value
    return uuid.uuid4().hex


@web.middleware
async def correlation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cid = correlation_id_of(request)
    request[CORRELATION_ID] = cid
    with structlog.contextvars.bound_contextvars(correlation_id=cid):
        response = await handler(request)
    response.headers[CORRELATION_HEADER] = cid
    return response


def route_template(request: web.Request) -> str:
    """The matched route's template (`/v1/accounts/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    route = route_template(request)
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_DURATION.labels(request.method, route).observe(elapsed)
    if _access_log.isEnabledFor(logging.INFO) and not route.startswith(("/health", "/metrics")):
        log.info(
            "http request",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(elapsed * 1000, 2),
        )
    return response


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        default_text = f"{exc.status}: {exc.reason}"
        return problem_response(
            exc.status,
            detail=exc.text if exc.text and exc.text != default_text else None,
            instance=request.path,
            headers=headers or None,
        )
    except ConnectionResetError:
        # The client went away mid-request (say, while its body was read): nobody to answer.
        log.info("client disconnected", route=route_template(request))
        return web.Response(status=400)
    except Exception:
        log.exception("unhandled error", route=route_template(request))
        return problem_response(
            500,
            slug="internal-error",
            detail="The server failed to handle this request.",
            instance=request.path,
        )


def _long_poll_s(request: web.Request) -> float:
    """A read's own `?wait=N` (at most 30 s) adds to its deadline; the view checks the value."""
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return 0.0
    return min(max(wait, 0.0), 30.0) if wait == wait else 0.0  # NaN waits nothing


def deadline_middleware(deadline_s: float, prefix: str = "/v1/") -> Any:
    """Bound every API request to `deadline_s` (plus its long-poll wait): past it, a 504.

    The work in flight is cancelled; a write cancelled after its commit is still durable, and
    a retry with the same Idempotency-Key gets its response back.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        try:
            async with asyncio.timeout(deadline_s + _long_poll_s(request)):
                return await handler(request)
        except TimeoutError:
            DEADLINE_EXCEEDED.labels(route_template(request)).inc()
            return problem_response(
                504,
                slug="deadline-exceeded",
                detail=f"the request did not complete within {deadline_s:g}s; "
                "retry with the same Idempotency-Key",
                instance=request.path,
            )

    return middleware


MIDDLEWARES = [correlation_middleware, observe_middleware, problem_middleware]
