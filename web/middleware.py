"""The edge of every request, as one aiohttp middleware: correlation id, problems, RED metrics.

In order, outermost first:
- the correlation id (the caller's `X-Correlation-ID` or `X-Request-ID` when safe to echo,
  else a new one) is bound before anything logs, and echoed in the response;
- RED metrics and the access log see the final status of every request, because
- every exception becomes a problem+json response (a 500 that shows no internals), and
- with a deadline, an API request gets the deadline plus its long-poll wait; past it the work
  in flight is cancelled and the answer is a 504.

One layer rather than four: every layer costs every request a coroutine and an await.
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
_UNLOGGED_ROUTES = ("/health", "/metrics")  # probes and scrapes: counted, not logged

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


def route_template(request: web.Request) -> str:
    """The matched route's template (`/v1/accounts/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _long_poll_s(request: web.Request) -> float:
    """A read's own `?wait=N` (at most 30 s) adds to its deadline; the view checks the value."""
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return 0.0
    return min(max(wait, 0.0), 30.0) if wait == wait else 0.0  # NaN waits nothing


def edge_middleware(deadline_s: float | None = None, prefix: str = "/v1/") -> Any:
    """The edge; with `deadline_s`, requests under `prefix` are bounded by it (504 past it).

    A write cancelled by the deadline after its commit is still durable, and a retry with the
    same Idempotency-Key gets its response back.
    """

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        cid = correlation_id_of(request)
        request[CORRELATION_ID] = cid
        bound = structlog.contextvars.bind_contextvars(correlation_id=cid)
        try:
            budget = deadline_s if request.path.startswith(prefix) else None
            deadline: asyncio.Timeout | None = None
            try:
                if budget is not None:
                    deadline = asyncio.timeout(budget + _long_poll_s(request))
                    async with deadline:
                        response = await handler(request)
                else:
                    response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = _http_problem(request, exc)
            except ConnectionResetError:
                # The client went away mid-request (say, while its body was read): nobody
                # to answer.
                log.info("client disconnected", route=route_template(request))
                response = web.Response(status=400)
            except TimeoutError:
                if budget is not None and deadline is not None and deadline.expired():
                    response = _deadline_exceeded(request, budget)
                else:  # a timeout of the handler's own escaped it: not the deadline
                    response = _internal_error(request)
            except Exception:
                response = _internal_error(request)
            _observe(request, response, time.perf_counter() - started)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        response.headers[CORRELATION_HEADER] = cid
        return response

    return edge


def _observe(request: web.Request, response: web.StreamResponse, elapsed: float) -> None:
    route = route_template(request)
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_DURATION.labels(request.method, route).observe(elapsed)
    if _access_log.isEnabledFor(logging.INFO) and not route.startswith(_UNLOGGED_ROUTES):
        log.info(
            "http request",
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round(elapsed * 1000, 2),
        )


def _http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    default_text = f"{exc.status}: {exc.reason}"
    return problem_response(
        exc.status,
        detail=exc.text if exc.text and exc.text != default_text else None,
        instance=request.path,
        headers=headers or None,
    )


def _internal_error(request: web.Request) -> web.Response:
    """Called while the exception is handled: the log line carries it, the answer does not."""
    log.exception("unhandled error", route=route_template(request))
    return problem_response(
        500,
        slug="internal-error",
        detail="The server failed to handle this request.",
        instance=request.path,
    )


def _deadline_exceeded(request: web.Request, deadline_s: float) -> web.Response:
    DEADLINE_EXCEEDED.labels(route_template(request)).inc()
    return problem_response(
        504,
        slug="deadline-exceeded",
        detail=f"the request did not complete within {deadline_s:g}s; "
        "retry with the same Idempotency-Key",
        instance=request.path,
    )


MIDDLEWARES = [edge_middleware()]
"""The edge without a deadline; the worker's own has `ATLAS_REQUEST_DEADLINE_S`."""
