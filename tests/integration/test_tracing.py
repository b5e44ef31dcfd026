"""One trace from an HTTP write to the legs it causes, read from a real worker's span file.

HTTP server span -> outbox.insert -> outbox.publish (relay) -> ledger.process (the command)
-> ledger.process (the credit leg) and transfers.process (the transfer events), all under the
trace id of the caller's own `traceparent`; the request's log lines carry that trace id too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.operations import read_topic
from tests.integration.processes import Response, WorkerProcess, http, wait_until
from tests.integration.stack import Stack, tag
from tests.integration.test_writes import authed_get

pytestmark = pytest.mark.integration
Spawn = Callable[..., WorkerProcess]


def post(
    worker: WorkerProcess,
    path: str,
    body: Any,
    key: str,
    idem: str,
    extra: dict[str, str] | None = None,
) -> Response:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {key}",
        "Idempotency-Key": idem,
        **(extra or {}),
    }
    return http("POST", worker.url + path, data=json.dumps(body).encode(), headers=headers)


def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def in_trace(path: Path, trace_id: str) -> list[dict[str, Any]]:
    return [s for s in spans_of(path) if s["trace_id"] == trace_id]


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


async def _deposit(stack: Stack, topic: str, account: str, amount: int, traceparent: str) -> str:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        event_id = str(uuid.uuid4())
        payment = {
            "event_id": event_id,
            "type": "deposit",
            "account_id": account,
            "amount": amount,
            "currency": "EUR",
            "occurred_at": "2026-11-26T10:00:00Z",
        }
        await producer.send_and_wait(
            topic,
            orjson.dumps(payment),
            key=account.encode(),
            headers=[("traceparent", traceparent.encode()), ("correlation-id", b"producer-1")],
        )
        return event_id
    finally:
        await producer.stop()


def test_one_trace_runs_from_the_http_write_to_the_legs(
    spawn_worker: Spawn, api_key: str, stack: Stack, tmp_path: Path
) -> None:
    prefix = f"tr{tag()}."
    spans_file = tmp_path / "spans.jsonl"
    worker = spawn_worker(
        ATLAS_TOPIC_PREFIX=prefix,
        ATLAS_APP_NAME=f"atlas-{prefix[:-1]}",
        ATLAS_TRACE_EXPORTER="file",
        ATLAS_TRACE_FILE=str(spans_file),
    )
    worker.wait_ready()
    a, b = f"tr-a-{uuid.uuid4().hex[:6]}", f"tr-b-{uuid.uuid4().hex[:6]}"
    for account in (a, b):
        body = {"owner_email": "t@example.com", "currency": "EUR", "account_id": account}
        assert post(worker, "/v1/accounts", body, api_key, f"open-{account}").status == 202
    wait_until(
        lambda: all(authed_get(worker, f"/v1/accounts/{x}", api_key).status == 200 for x in (a, b)),
        30,
        what="accounts opened",
    )

    # A producer's payment with its own trace context: the outcome continues that trace.
    producer_trace = secrets.token_hex(16)
    event_id = asyncio.run(
        _deposit(stack, f"{prefix}atlas.payments.v1", a, 100, f"00-{producer_trace}-{'1' * 16}-01")
    )
    wait_until(
        lambda: authed_get(worker, f"/v1/accounts/{a}", api_key).json()["balance"] == 100,
        30,
        what="deposit applied",
    )

    # The transfer, under the caller's trace.
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    r = post(
        worker,
        "/v1/transfers",
        {"from_account": a, "to_account": b, "amount": 40, "currency": "EUR"},
        api_key,
        f"transfer-{a}",
        extra={"traceparent": f"00-{trace_id}-{caller_span}-01", "X-Correlation-ID": "corr-tr-1"},
    )
    assert r.status == 202, r.body
    transfer_id = r.json()["transfer_id"]
    final = authed_get(worker, f"/v1/transfers/{transfer_id}?wait=20", api_key)
    assert final.json()["status"] == "completed", final.body

    expected = ("POST /v1/transfers", "outbox.insert", "outbox.publish", "ledger.process")

    def whole_trace() -> list[dict[str, Any]] | None:
        spans = in_trace(spans_file, trace_id)
        done = all(named(spans, n) for n in expected)
        # The command, its credit leg; the transfer's debited and completed events.
        return (
            spans
            if done
            and len(named(spans, "ledger.process")) >= 2
            and len(named(spans, "transfers.process")) >= 2
            else None
        )

    spans = wait_until(whole_trace, 20, what=f"the spans of trace {trace_id}")
    by_id = {s["span_id"]: s for s in spans}
    (server,) = named(spans, "POST /v1/transfers")
    assert server["kind"] == "SERVER" and server["parent_span_id"] == caller_span
    assert server["attributes"]["http.route"] == "/v1/transfers"
    assert server["attributes"]["http.response.status_code"] == 202
    assert server["attributes"]["atlas.correlation_id"] == "corr-tr-1"
    (insert,) = named(spans, "outbox.insert")
    assert insert["parent_span_id"] == server["span_id"]
    (publish,) = named(spans, "outbox.publish")
    assert publish["kind"] == "PRODUCER" and publish["parent_span_id"] == insert["span_id"]
    assert (
        publish["attributes"]["messaging.destination.name"] == f"{prefix}atlas.ledger.commands.v1"
    )
    command, *legs = sorted(named(spans, "ledger.process"), key=lambda s: s["start_ns"])
    assert command["kind"] == "CONSUMER" and command["parent_span_id"] == publish["span_id"]
    assert command["attributes"]["atlas.correlation_id"] == "corr-tr-1"
    assert (
        command["attributes"]["messaging.message.id"]
        == publish["attributes"]["messaging.message.id"]
    )
    assert any(by_id.get(leg["parent_span_id"]) is command for leg in legs)  # the credit leg
    assert {by_id[s["parent_span_id"]]["name"] for s in named(spans, "transfers.process")} == {
        "ledger.process"
    }
    # Each event span links to the batch it was processed in.
    batches = {s["span_id"] for s in spans_of(spans_file) if s["name"].endswith(".batch")}
    assert all(
        s["links"] and s["links"][0]["span_id"] in batches
        for s in [command, *legs, *named(spans, "transfers.process")]
    )
    assert {s["service"] for s in spans} == {f"atlas-{prefix[:-1]}"}

    # The request's log lines carry its trace and span ids beside the correlation id.
    logged = [rec for rec in worker.log_records() if rec.get("trace_id") == trace_id]
    access = [rec for rec in logged if rec.get("event") == "http request"]
    assert access and access[0]["span_id"] == server["span_id"], logged
    assert access[0]["correlation_id"] == "corr-tr-1"

    # The producer's trace: its payment was processed in it, and the outcome carries it on.
    (deposit,) = named(in_trace(spans_file, producer_trace), "ledger.process")
    assert deposit["parent_span_id"] == "1" * 16
    outcomes = asyncio.run(read_topic(stack.kafka_bootstrap, f"{prefix}atlas.outcomes.v1"))
    (outcome,) = [o for o in outcomes if orjson.loads(o.value)["event_id"] == event_id]
    headers = {k: bytes(v).decode() for k, v in outcome.headers}
    assert headers["traceparent"].split("-")[1:3] == [producer_trace, deposit["span_id"]]
    assert headers["correlation-id"] == "producer-1"


def test_no_spans_are_written_while_tracing_is_off(
    spawn_worker: Spawn, api_key: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    worker = spawn_worker(ATLAS_TRACE_FILE=str(spans_file))  # ATLAS_TRACE_EXPORTER: none
    worker.wait_ready()
    body = {"owner_email": "n@example.com", "currency": "EUR"}
    r = post(worker, "/v1/accounts", body, api_key, f"k-{uuid.uuid4().hex[:8]}")
    assert r.status == 202
    account = r.json()["account_id"]
    wait_until(
        lambda: authed_get(worker, f"/v1/accounts/{account}", api_key).status == 200,
        30,
        what="account opened",
    )
    assert not spans_file.exists()
