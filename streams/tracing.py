"""Tracing with the OpenTelemetry SDK: one trace from an HTTP write to the legs it causes.

    HTTP request (server span) -> `outbox.insert` (its traceparent stored in the outbox row)
    -> `outbox.publish` by the relay (its traceparent in the Kafka record's headers)
    -> `ledger.process` per event (its traceparent on every leg, outcome and transfer event
       sent for that event) -> `ledger.process` of a leg, `transfers.process`, ...

The W3C `traceparent` and the `correlation-id` travel as Kafka headers (the payment contract
allows both). `setup_tracing` runs once per worker. With no exporter the SDK is not installed:
the API's no-op tracer answers, `enabled()` is False, and the agents start no span at all;
per event they only look up the two headers to pass them on unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.settings import Settings
from streams.span_file import JsonLinesExporter, json_line

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CORRELATION_ID = "correlation-id"
EVENT_ID = "event-id"
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_TRACEPARENT_FORMAT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("atlas")
_enabled = False
_provider: TracerProvider | None = None

Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None


def enabled() -> bool:
    """Whether spans are recorded in this process (an exporter was set up)."""
    return _enabled


def tracer() -> trace.Tracer:
    return _tracer


# ---- set-up ---------------------------------------------------------------------------------


def exporter_choice(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """`file` (the test hook) always wins; then an OTLP endpoint; then `console` or `none`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    if settings.trace_exporter == "file":
        return "file"
    if any(environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        return "otlp"
    return settings.trace_exporter


def build_provider(
    settings: Settings, choice: str, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """The SDK provider for `choice`, or None for `none`. Installs nothing globally."""
    if choice == "none":
        return None
    attributes: dict[str, Any] = {"deployment.environment.name": settings.environment}
    if not environ.get("OTEL_SERVICE_NAME"):  # the standard variable wins when set
        attributes["service.name"] = settings.app_name
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        resource=Resource.create(attributes),
    )
    exporter: SpanExporter
    delay_ms: float | None = None
    if choice == "otlp":
        # Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_*
        # variables, which the exporter reads itself.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif choice == "console":
        exporter = ConsoleSpanExporter(formatter=lambda s: json_line(s).decode() + "\n")
    elif choice == "file":
        path = settings.trace_file or settings.worker_data_dir / "spans.jsonl"
        exporter = JsonLinesExporter(path)
        delay_ms = 200  # tests read the file: do not hold spans for the default 5 s
    else:
        raise ValueError(f"unknown trace exporter {choice!r}")
    # Exports run on the processor's own thread, never on the event loop.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    return provider


def setup_tracing(settings: Settings) -> str:
    """Install the tracer provider the settings and environment ask for; once per process.

    Returns the exporter chosen. Spans still buffered are exported at interpreter exit.
    """
    global _enabled, _provider, _tracer
    if _provider is not None:
        return "already set up"
    choice = exporter_choice(settings)
    provider = build_provider(settings, choice)
    if provider is not None:
        _provider = provider
        trace.set_tracer_provider(provider)
        _tracer = provider.get_tracer("atlas")
        _enabled = True
    return choice


# ---- W3C trace context in headers ------------------------------------------------------------


def header(headers: Headers, name: str) -> str | None:
    """One header of a Kafka record (a list of pairs or a mapping), as text."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        value = headers.get(name)
    else:
        value = next((v for k, v in headers if k == name), None)
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def traceparent_of(ctx: SpanContext) -> str | None:
    """The W3C `traceparent` of a span, or None for an invalid (no-op) one."""
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a `traceparent` header, if it is well formed."""
    if not traceparent:
        return None
    match = _TRACEPARENT_FORMAT.match(traceparent.strip().lower())
    return match.group(1) if match and match.group(1) != "0" * 32 else None


def context_from(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The remote parent a `traceparent` names (None when absent or malformed)."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def context_from_headers(headers: Headers) -> Context | None:
    return context_from(header(headers, TRACEPARENT), header(headers, TRACESTATE))


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span().get_span_context())


def log_fields(correlation_id: str | None, traceparent: str | None) -> dict[str, str]:
    """What a log line about one message carries: its correlation id and trace id."""
    fields: dict[str, str] = {}
    if correlation_id:
        fields["correlation_id"] = correlation_id
    if trace_id := trace_id_of(traceparent):
        fields["trace_id"] = trace_id
    return fields


# ---- agents: a span per record of a batch -------------------------------------------------------

_EVENT_SPANS: ContextVar[dict[int, Span] | None] = ContextVar("atlas_event_spans", default=None)


class _Consumption:
    """A batch span, and one consumer span per record continuing the record's own trace."""

    def __init__(self, agent: str, events: Sequence[Any]) -> None:
        self.agent, self.events = agent, events

    def __enter__(self) -> None:
        self.batch = _tracer.start_span(
            f"{self.agent}.batch", attributes={"messaging.batch.message_count": len(self.events)}
        )
        links = [Link(self.batch.get_span_context())]
        spans: dict[int, Span] = {}
        for message in self.events:
            headers = message.headers
            attributes: dict[str, Any] = {
                "messaging.system": "kafka",
                "messaging.destination.name": message.topic,
                "messaging.destination.partition.id": str(message.partition),
                "messaging.kafka.offset": message.offset,
            }
            if event_id := header(headers, EVENT_ID):
                attributes["messaging.message.id"] = event_id
            if cid := header(headers, CORRELATION_ID):
                attributes["atlas.correlation_id"] = cid
            spans[id(message)] = _tracer.start_span(
                f"{self.agent}.process",
                context=context_from_headers(headers),
                kind=SpanKind.CONSUMER,
                links=links,
                attributes=attributes,
            )
        self._spans_token = _EVENT_SPANS.set(spans)
        self._context_token = otel_context.attach(trace.set_span_in_context(self.batch))

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._context_token)
        spans = _EVENT_SPANS.get() or {}
        _EVENT_SPANS.reset(self._spans_token)
        for span in spans.values():
            if exc is not None:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
        if exc is not None:
            self.batch.record_exception(exc)
            self.batch.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.batch.end()


_UNTRACED: AbstractContextManager[None] = nullcontext()


def consuming(agent: str, records: Sequence[Any]) -> AbstractContextManager[None]:
    """Around one batch of an agent: spans while tracing is on, nothing at all while off.

    Records are aiokafka's (or Faust messages): topic, partition, offset and headers.
    """
    return _Consumption(agent, records) if _enabled else _UNTRACED


def _event_span(record: Any) -> Span | None:
    spans = _EVENT_SPANS.get()
    return spans.get(id(record)) if spans else None


def carried(record: Any) -> list[tuple[str, bytes]] | None:
    """Headers for what is sent because of `record`: its correlation id and trace context.

    The traceparent is that of the record's own span, or the record's unchanged while untraced.
    """
    headers = record.headers
    if not headers:
        return None
    span = _event_span(record)
    traceparent = traceparent_of(span.get_span_context()) if span is not None else None
    traceparent = traceparent or header(headers, TRACEPARENT)
    out: list[tuple[str, bytes]] = []
    if traceparent:
        out.append((TRACEPARENT, traceparent.encode()))
        if state := header(headers, TRACESTATE):
            out.append((TRACESTATE, state.encode()))
    if cid := header(headers, CORRELATION_ID):
        out.append((CORRELATION_ID, cid.encode()))
    return out or None


def bound_event(record: Any) -> AbstractContextManager[Any]:
    """Bind the record's correlation id and trace id to the log lines written inside."""
    headers = record.headers
    span = _event_span(record)
    traceparent = traceparent_of(span.get_span_context()) if span is not None else None
    fields = log_fields(
        header(headers, CORRELATION_ID), traceparent or header(headers, TRACEPARENT)
    )
    if span is not None and span.get_span_context().is_valid:
        fields["span_id"] = f"{span.get_span_context().span_id:016x}"
    return structlog.contextvars.bound_contextvars(**fields)


# ---- the relay: a producer span per outbox row ---------------------------------------------------


class _Publish:
    """One outbox row on its way to Kafka: `headers` carry the publish span's traceparent."""

    def __init__(self, topic: str, headers: list[tuple[str, bytes]], event_id: object) -> None:
        self.span = _tracer.start_span(
            "outbox.publish",
            context=context_from_headers(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.message.id": str(event_id),
            },
        )
        traceparent = traceparent_of(self.span.get_span_context())
        kept = [(k, v) for k, v in headers if k != TRACEPARENT]
        self.headers = [*kept, (TRACEPARENT, traceparent.encode())] if traceparent else headers
        self._ends_later = False

    def __enter__(self) -> _Publish:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            self.span.end()
        elif not self._ends_later:
            self.span.end()

    def until(self, delivery: Any) -> None:
        """End the span when Kafka acknowledges (or fails) the record."""
        self._ends_later = True
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: Any) -> None:
        failure = None if delivery.cancelled() else delivery.exception()
        if delivery.cancelled() or failure is not None:
            self.span.set_status(Status(StatusCode.ERROR, type(failure).__name__))
        self.span.end()


class _Untraced:
    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.headers = headers

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def until(self, delivery: Any) -> None:
        return None


def publishing(
    topic: str, headers: list[tuple[str, bytes]], event_id: object
) -> _Publish | _Untraced:
    """Around the send of one outbox row; use the returned `headers` for the record."""
    return _Publish(topic, headers, event_id) if _enabled else _Untraced(headers)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """An internal span under the current one (a no-op span while tracing is off)."""
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


__all__ = [
    "CORRELATION_ID",
    "TRACEPARENT",
    "bound_event",
    "carried",
    "consuming",
    "context_from",
    "enabled",
    "header",
    "log_fields",
    "publishing",
    "setup_tracing",
    "trace_id_of",
    "traceparent_of",
]
