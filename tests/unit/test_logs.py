"""The log pipeline: secrets redacted, exceptions structured, the current trace on every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from streams import logs as logs_module
from streams.logs import add_trace_context, logging_config, redact_secrets, redact_text
from web.metrics import REGISTRY

KEY = "atl_" + "k" * 43


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cannot connect to postgresql://atlas:hunter2@db:5432/atlas",
            "cannot connect to postgresql://atlas:***@db:5432/atlas",
        ),
        ("redis://:pw@127.0.0.1:6380/0 down", "redis://:***@127.0.0.1:6380/0 down"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNz here", "Authorization: Basic *** here"),
        (f"b'Authorization: {KEY}\\x01'", "b'Authorization: ***'"),
        (f"key {KEY} refused", "key atl_*** refused"),
        ("host=db password=hunter2 user=atlas", "host=db password=*** user=atlas"),
        # Left alone: no credentials in them.
        ("http://127.0.0.1:6066/v1/accounts/a@b", "http://127.0.0.1:6066/v1/accounts/a@b"),
        ("postgresql://127.0.0.1:5433/atlas", "postgresql://127.0.0.1:5433/atlas"),
        ("3 tokens left, passed", "3 tokens left, passed"),
        ("basic validation failed", "basic validation failed"),
    ],
)
def test_secrets_in_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_values_of_secret_keys_are_replaced_at_any_depth() -> None:
    event = {
        "event": "connecting",
        "password": "p",
        "api_key": "k",
        "DATABASE_DSN": "postgresql://a:b@h/d",
        "client_secret": "s",
        "refresh-token": "t",
        "headers": {"Authorization": "Bearer x", "Accept": "json"},
        "attempts": [{"access_token": "t"}],
        "passed": 3,
        "token_count": 2,
        "tokens": 5,
        "empty_password": "",
    }
    assert redact_secrets(None, "info", event) == {
        "event": "connecting",
        "password": "***",
        "api_key": "***",
        "DATABASE_DSN": "***",
        "client_secret": "***",
        "refresh-token": "***",
        "headers": {"Authorization": "***", "Accept": "json"},
        "attempts": [{"access_token": "***"}],
        "passed": 3,
        "token_count": "***",
        "tokens": 5,
        "empty_password": "",
    }


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A stdlib logger rendered by the worker's own formatter."""
    spec: dict[str, Any] = dict(logging_config("INFO")["formatters"]["json"])
    formatter = spec.pop("()")(**spec)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("atlas.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_exceptions_are_structured_fields_without_locals_or_secrets(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    dsn = "postgresql://atlas:hunter2@db/atlas"  # a local of the frame below: never shown
    try:
        raise ConnectionError(f"cannot reach {dsn}")
    except ConnectionError:
        logger.exception("lost the database", extra={"authorization": f"Bearer {KEY}"})
    line = json.loads(stream.getvalue())
    assert line["event"] == "lost the database" and line["level"] == "error"
    assert line["authorization"] == "***"
    (error,) = line["exception"]
    assert error["exc_type"] == "ConnectionError"
    assert error["exc_value"] == "cannot reach postgresql://atlas:***@db/atlas"
    assert error["frames"] and all("locals" not in f for f in error["frames"])
    assert "hunter2" not in stream.getvalue() and KEY not in stream.getvalue()


def test_the_current_span_is_named_on_a_line() -> None:
    assert add_trace_context(None, "info", {}) == {}
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = add_trace_context(None, "info", {"event": "x"})
        bound = add_trace_context(None, "info", {"trace_id": "an-event's"})
    ctx = span.get_span_context()
    assert line == {
        "event": "x",
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
    }
    assert bound == {"trace_id": "an-event's"}  # a line about an event keeps the event's trace


def test_fausts_buffer_full_warning_is_counted_always_and_logged_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(logs_module.time, "monotonic", lambda: now[0])
    keep = logs_module.ProducerBufferFull(every_s=60.0)
    record = logging.LogRecord(
        "faust.transport.producer",
        logging.WARNING,
        __file__,
        1,
        "producer buffer full size 142",
        None,
        None,
    )
    other = logging.LogRecord(
        "faust.transport.producer", logging.WARNING, __file__, 1, "something else", None, None
    )
    before = _buffer_full_count()
    assert [keep.filter(record) for _ in range(5)] == [True, False, False, False, False]
    now[0] += 61.0
    assert keep.filter(record)
    assert keep.filter(other)  # every other line of that logger passes
    assert _buffer_full_count() - before == 6
    config = logging_config("INFO")
    assert config["loggers"]["faust.transport.producer"]["filters"] == ["producer_buffer_full"]


def _buffer_full_count() -> float:
    return REGISTRY.get_sample_value("atlas_producer_buffer_full_total") or 0.0
