"""HTTP tracing: a server span per request, and the outbox rows that carry its trace onward.

The middleware sits outermost, so its span covers the correlation id, the access log line and
the problem rendering: every log line of a request carries `trace_id` and `span_id`
(`streams.logs` adds them from the current span). An inbound W3C `traceparent` is continued.

A write's outbox insert is a short `outbox.insert` span of its own (the group-commit
transaction it joins is shared by many requests); its traceparent and the request's
correlation id go into the headers of every outbox row the request writes, which the relay
turns into Kafka headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from streams import tracing
from web.idempotency import Pending
from web.middleware import CORRELATION_ID, Handler, route_template

_UNTRACED_PREFIXES = ("/health", "/metrics")


def tracing_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tracing.enabled() or request.path.startswith(_UNTRACED_PREFIXES):
            return await handler(request)
        route = route_template(request)
        parent = tracing.context_from(
            request.headers.get(tracing.TRACEPARENT), request.headers.get(tracing.TRACESTATE)
        )
        with tracing.tracer().start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
        ) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if (cid := request.get(CORRELATION_ID)) is not None:
                span.set_attribute("atlas.correlation_id", cid)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return middleware


def request_headers(request: web.Request) -> dict[str, str]:
    """What a request's outbox rows carry from it: its correlation id and, when this process
    does not trace, the caller's trace context, passed on unchanged (W3C)."""
    headers: dict[str, str] = {}
    if (cid := request.get(CORRELATION_ID)) is not None:
        headers[tracing.CORRELATION_ID] = cid
    if not tracing.enabled():
        inbound = request.headers.get(tracing.TRACEPARENT)
        if tracing.trace_id_of(inbound) is not None:
            headers[tracing.TRACEPARENT] = str(inbound).strip().lower()
    return headers


@contextmanager
def outbox_insert(pending: Pending) -> Iterator[Pending]:
    """Around one traced attempt to write a request's outbox rows: an `outbox.insert` span,
    and `pending` whose rows carry the span's traceparent."""
    rows = pending.effect.rows
    with tracing.span(
        "outbox.insert",
        **{"outbox.rows": len(rows), "outbox.event_types": [r.event_type for r in rows]},
    ):
        traceparent = tracing.current_traceparent()
        yield with_headers(pending, {tracing.TRACEPARENT: traceparent} if traceparent else {})


def with_headers(pending: Pending, headers: dict[str, str]) -> Pending:
    """`pending` whose outbox rows get `headers` too (`Pending.row_headers`)."""
    if not headers:
        return pending
    return replace(pending, headers={**pending.headers, **headers})
