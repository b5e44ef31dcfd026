"""Tracing: exporter choice, sampling, the span file, W3C headers, and the per-event spans."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from streams import tracing
from streams.settings import Settings
from web.idempotency import Effect, OutboxRow, Pending
from web.middleware import CORRELATION_ID, MIDDLEWARES
from web.tracing import outbox_insert, request_headers, tracing_middleware

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on, into memory, for this test only (the process's provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_enabled", True)
    return exporter


def event(topic: str = "t", offset: int = 0, **headers: str) -> Any:
    """A consumed record, as an agent's batch holds them."""
    raw = [(k.replace("_", "-"), v.encode()) for k, v in headers.items()]
    return SimpleNamespace(topic=topic, partition=0, offset=offset, headers=raw)


# ---- set-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exporter", "environ", "chosen"),
    [
        ("none", {}, "none"),
        ("console", {}, "console"),
        ("file", {}, "file"),
        ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ("console", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ("file", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "file"),
        ("console", {"OTEL_SDK_DISABLED": "true"}, "none"),
        ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, "none"),
    ],
)
def test_the_exporter_is_chosen_by_setting_and_environment(
    exporter: str, environ: dict[str, str], chosen: str
) -> None:
    assert tracing.exporter_choice(settings(trace_exporter=exporter), environ) == chosen


def test_no_exporter_builds_no_provider() -> None:
    assert tracing.build_provider(settings(), "none", {}) is None


def test_sampling_is_parent_based_on_a_trace_id_ratio() -> None:
    provider = tracing.build_provider(settings(trace_sample_ratio=0.25), "console", {})
    assert provider is not None
    sampler = provider.sampler
    assert isinstance(sampler, ParentBased)
    assert isinstance(sampler._root, TraceIdRatioBased) and sampler._root.rate == 0.25
    provider.shutdown()


def test_a_zero_ratio_records_no_new_trace_but_follows_a_sampled_parent() -> None:
    provider = tracing.build_provider(settings(trace_sample_ratio=0.0), "console", {})
    assert provider is not None
    tracer = provider.get_tracer("test")
    assert not tracer.start_span("root").is_recording()
    child = tracer.start_span("child", context=tracing.context_from(TRACEPARENT))
    assert child.is_recording()
    assert not tracer.start_span(
        "child", context=tracing.context_from(f"00-{TRACE}-{PARENT}-00")
    ).is_recording()
    provider.shutdown()


def test_the_resource_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = tracing.build_provider(settings(app_name="atlas-x"), "console", {})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "atlas-x"
    provider.shutdown()


def test_the_otlp_exporter_is_built_from_the_standard_variables() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = tracing.build_provider(settings(), "otlp", {})
    assert provider is not None
    (processor,) = provider._active_span_processor._span_processors
    assert isinstance(processor._batch_processor._exporter, OTLPSpanExporter)  # type: ignore[attr-defined]
    provider.shutdown()


def test_the_file_exporter_writes_finished_spans_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "spans.jsonl"
    provider = tracing.build_provider(settings(trace_file=path), "file", {})
    assert provider is not None
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer", context=tracing.context_from(TRACEPARENT)) as outer:
        outer.add_event("started")
        with tracer.start_as_current_span("inner", attributes={"k": 1}):
            pass
    provider.force_flush()
    provider.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    inner, outer = lines
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["trace_id"] == outer["trace_id"] == TRACE
    assert inner["parent_span_id"] == outer["span_id"] and outer["parent_span_id"] == PARENT
    assert inner["attributes"] == {"k": 1} and inner["kind"] == "INTERNAL"
    assert outer["events"] == ["started"] and outer["end_ns"] >= outer["start_ns"]


# ---- headers --------------------------------------------------------------------------------


def test_headers_are_read_from_pairs_or_mappings() -> None:
    assert tracing.header([("a", b"1"), ("traceparent", b"x")], "traceparent") == "x"
    assert tracing.header({"traceparent": b"y"}, "traceparent") == "y"
    assert tracing.header(None, "traceparent") is None
    assert tracing.header([], "traceparent") is None


def test_a_traceparent_round_trips_through_a_context() -> None:
    ctx = tracing.context_from(TRACEPARENT)
    assert ctx is not None
    span_context = trace.get_current_span(ctx).get_span_context()
    assert span_context.is_remote and tracing.traceparent_of(span_context) == TRACEPARENT
    assert tracing.trace_id_of(TRACEPARENT) == TRACE


@pytest.mark.parametrize(
    "bad", [None, "", "garbage", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01"]
)
def test_malformed_traceparents_start_no_trace(bad: str | None) -> None:
    assert tracing.context_from(bad) is None
    if bad is None or "0" * 32 in bad or "-" not in bad:
        assert tracing.trace_id_of(bad) is None


def test_log_fields_name_the_correlation_and_trace() -> None:
    assert tracing.log_fields("c-1", TRACEPARENT) == {"correlation_id": "c-1", "trace_id": TRACE}
    assert tracing.log_fields(None, "nonsense") == {}


# ---- agents -------------------------------------------------------------------------------------


def test_while_off_a_batch_starts_nothing_and_headers_pass_through_unchanged() -> None:
    assert not tracing.enabled()
    e = event(traceparent=TRACEPARENT, correlation_id="c-1", event_id="e-1")
    with tracing.consuming("ledger", [e]) as nothing:
        assert nothing is None
        assert tracing.carried(e) == [
            ("traceparent", TRACEPARENT.encode()),
            ("correlation-id", b"c-1"),
        ]
    assert tracing.carried(event()) is None


def test_each_event_gets_a_consumer_span_in_its_own_trace(spans: InMemorySpanExporter) -> None:
    traced = event("cmds", 7, traceparent=TRACEPARENT, correlation_id="c-1", event_id="e-1")
    fresh = event("payments", 8)
    with tracing.consuming("ledger", [traced, fresh]):
        carried = dict(tracing.carried(traced) or [])
        assert tracing.carried(fresh) is None  # no headers: nothing to carry
    finished = {
        s.name + str(s.attributes.get("messaging.kafka.offset")): s
        for s in spans.get_finished_spans()
    }
    batch, one, two = (
        finished["ledger.batchNone"],
        finished["ledger.process7"],
        finished["ledger.process8"],
    )
    assert one.kind is SpanKind.CONSUMER and one.context.trace_id == int(TRACE, 16)
    assert one.parent is not None and one.parent.span_id == int(PARENT, 16)
    assert two.parent is None and two.context.trace_id != one.context.trace_id
    assert [link.context.span_id for link in one.links] == [batch.context.span_id]
    assert one.attributes["messaging.message.id"] == "e-1"
    assert one.attributes["atlas.correlation_id"] == "c-1"
    assert carried == {
        "traceparent": tracing.traceparent_of(one.context).encode(),  # type: ignore[union-attr]
        "correlation-id": b"c-1",
    }


def test_a_failed_batch_marks_its_spans(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.consuming("ledger", [event(traceparent=TRACEPARENT)]):
        raise RuntimeError("boom")
    assert {s.status.status_code.name for s in spans.get_finished_spans()} == {"ERROR"}


def test_log_lines_about_an_event_carry_its_ids(spans: InMemorySpanExporter) -> None:
    e = event(traceparent=TRACEPARENT, correlation_id="c-1")
    with tracing.consuming("ledger", [e]), tracing.bound_event(e):
        bound = structlog.contextvars.get_contextvars()
    assert bound["correlation_id"] == "c-1" and bound["trace_id"] == TRACE
    assert bound["span_id"] != PARENT  # the event's own span, a child of the producer's


# ---- the relay ---------------------------------------------------------------------------------


async def test_a_publish_span_continues_the_row_and_ends_on_the_ack(
    spans: InMemorySpanExporter,
) -> None:
    headers = [("traceparent", TRACEPARENT.encode()), ("event-id", b"e-1")]
    delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    with tracing.publishing("topic", headers, "e-1") as publish:
        sent = dict(publish.headers)
        publish.until(delivery)
    assert spans.get_finished_spans() == ()  # not before Kafka answers
    delivery.set_result(None)
    await asyncio.sleep(0)
    (span,) = spans.get_finished_spans()
    assert span.kind is SpanKind.PRODUCER and span.name == "outbox.publish"
    assert span.parent is not None and span.parent.span_id == int(PARENT, 16)
    assert sent["traceparent"].decode() == tracing.traceparent_of(span.context)
    assert sent["event-id"] == b"e-1"


def test_while_off_a_row_keeps_its_headers() -> None:
    headers = [("traceparent", TRACEPARENT.encode())]
    with tracing.publishing("topic", headers, "e-1") as publish:
        assert publish.headers is headers


# ---- HTTP ---------------------------------------------------------------------------------------


async def item(request: web.Request) -> web.Response:
    return web.json_response({"trace": tracing.current_traceparent()})


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[tracing_middleware(), *MIDDLEWARES])
    app.router.add_get("/v1/items/{id}", item)
    app.router.add_get("/health/live", item)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_a_request_gets_a_server_span_named_by_its_route(
    spans: InMemorySpanExporter, client: TestClient
) -> None:
    r = await client.get(
        "/v1/items/42", headers={"traceparent": TRACEPARENT, "X-Correlation-ID": "c-7"}
    )
    inside = (await r.json())["trace"]
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /v1/items/{id}" and span.kind is SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/items/{id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["atlas.correlation_id"] == "c-7"
    assert span.parent is not None and span.parent.span_id == int(PARENT, 16)
    assert inside == tracing.traceparent_of(span.context)
    r = await client.get("/v1/items/nothing-here/x")
    assert r.status == 404
    assert spans.get_finished_spans()[-1].name == "GET unmatched"


async def test_health_probes_are_not_traced(
    spans: InMemorySpanExporter, client: TestClient
) -> None:
    assert (await client.get("/health/live")).status == 200
    assert spans.get_finished_spans() == ()


def _pending() -> Pending:
    row = OutboxRow("account", "a-1", "OpenAccount", "cmds", '{"k": 1}', headers={"x": "y"})
    return Pending(uuid.uuid4(), "key", b"f", Effect(202, {}, "a-1", [row]))


def _request(**headers: str) -> Any:
    request = make_mocked_request("POST", "/v1/accounts", headers=headers)
    request[CORRELATION_ID] = "c-9"
    return request


def test_outbox_rows_carry_the_insert_span_and_correlation_id(
    spans: InMemorySpanExporter,
) -> None:
    pending = replace(_pending(), headers=request_headers(_request()))
    with outbox_insert(pending) as traced:
        (row,) = traced.effect.rows
    (span,) = spans.get_finished_spans()
    assert span.name == "outbox.insert"
    assert traced.row_headers(row) == {
        "x": "y",
        "correlation-id": "c-9",
        "traceparent": tracing.traceparent_of(span.context),
    }
    assert row is pending.effect.rows[0]  # the same row, with the request's headers added


def test_while_off_outbox_rows_pass_the_callers_trace_on() -> None:
    assert request_headers(_request(traceparent=TRACEPARENT)) == {
        "correlation-id": "c-9",
        "traceparent": TRACEPARENT,
    }
    assert request_headers(_request(traceparent="junk")) == {"correlation-id": "c-9"}


@pytest.fixture(autouse=True)
def _no_global_provider() -> Iterator[None]:
    yield
    assert tracing._provider is None  # no test installs the process-wide provider
