"""The relay's pure parts: row to Kafka record, batching rules, retry delays, command status."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from streams.relay import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    RetryDelays,
    deleted_count,
    header_value,
    more_to_drain,
    to_record,
)


def outbox_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.UUID("0b9f6a52-3c8e-4b52-9d35-2b1f3f0c2a11"),
        "aggregate_id": "acc-ß1",
        "event_type": "RequestTransfer",
        "topic": "atlas.ledger.commands.v1",
        "payload": {"transfer_id": "t-1", "amount": 1250, "currency": "EUR"},
        "headers": {"traceparent": "00-abc-def-01", "correlation-id": "c-9"},
    }
    row.update(overrides)
    return row


def test_row_becomes_its_record() -> None:
    record = to_record(outbox_row())
    assert record.event_id == uuid.UUID("0b9f6a52-3c8e-4b52-9d35-2b1f3f0c2a11")
    assert record.topic == "atlas.ledger.commands.v1"
    assert record.key == "acc-ß1".encode()
    assert record.value == orjson.dumps({"transfer_id": "t-1", "amount": 1250, "currency": "EUR"})
    assert record.headers == [
        ("traceparent", b"00-abc-def-01"),
        ("correlation-id", b"c-9"),
        (EVENT_ID_HEADER, b"0b9f6a52-3c8e-4b52-9d35-2b1f3f0c2a11"),
        (EVENT_TYPE_HEADER, b"RequestTransfer"),
    ]


def test_row_id_and_type_win_over_same_named_headers() -> None:
    record = to_record(
        outbox_row(headers={EVENT_ID_HEADER: "forged", EVENT_TYPE_HEADER: "Other", "x": "1"})
    )
    assert dict(record.headers) == {
        "x": b"1",
        EVENT_ID_HEADER: b"0b9f6a52-3c8e-4b52-9d35-2b1f3f0c2a11",
        EVENT_TYPE_HEADER: b"RequestTransfer",
    }
    assert len(record.headers) == 3


def test_missing_headers_and_string_ids_are_accepted() -> None:
    record = to_record(outbox_row(headers=None, id="0b9f6a52-3c8e-4b52-9d35-2b1f3f0c2a11"))
    assert [name for name, _ in record.headers] == [EVENT_ID_HEADER, EVENT_TYPE_HEADER]


def test_headers_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(TypeError):
        to_record(outbox_row(headers=["traceparent", "x"]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("é", "é".encode()), (5, b"5"), (True, b"true"), (None, b"null"), ({"a": 1}, b'{"a":1}')],
)
def test_header_values_are_utf8_strings_or_json(value: object, expected: bytes) -> None:
    assert header_value(value) == expected


def test_payload_keeps_integers_exact() -> None:
    record = to_record(outbox_row(payload={"amount": 100_000_000_000, "nested": [1, {"b": None}]}))
    assert orjson.loads(record.value) == {"amount": 100_000_000_000, "nested": [1, {"b": None}]}


@pytest.mark.parametrize(
    ("fetched", "published", "more"),
    [(10, 10, True), (9, 9, False), (10, 9, False), (10, 0, False), (0, 0, False)],
)
def test_only_a_full_batch_that_went_out_whole_is_followed_by_another(
    fetched: int, published: int, more: bool
) -> None:
    assert more_to_drain(fetched, published, batch=10) is more


@pytest.mark.parametrize(
    ("status", "count"), [("DELETE 0", 0), ("DELETE 1000", 1000), ("UPDATE 3", 0), ("", 0)]
)
def test_deleted_count_reads_the_command_status(status: str, count: int) -> None:
    assert deleted_count(status) == count


def test_retry_delays_grow_jittered_to_a_cap_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backoff.full_jitter", lambda value: value)  # the ceiling of each draw
    delays = RetryDelays(0.25, 2.0)
    assert [delays.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    delays.reset()
    assert delays.next() == 0.25


def test_retry_delays_are_fully_jittered() -> None:
    delays = RetryDelays(1.0, 1.0)
    draws = [delays.next() for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert min(draws) < 0.5 < max(draws)
