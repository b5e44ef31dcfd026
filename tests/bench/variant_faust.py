"""Variant (d): the floor of a per-record Faust agent: delivery alone, the work in a plain dict.

One agent on the payments topic takes Faust's own batches (`take_events`: one event per record,
gathered for up to 0.1 s), decodes with orjson and keeps the seen event ids and the sums in
memory: no table, no changelog, no output, no commit gate. What it costs per event is what
Faust's consumer, conductor and stream cost per record before an agent does any work: the
floor Atlas's batch runtime (`streams.batches`) goes under by delivering a batch per event.

`python -m tests.bench.variant_faust --topic T --group G --expected N --result out.json
 --state-dir DIR`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from streams.settings import Settings
from tests.bench.variant_common import VariantResult, variant_main


def run(
    bootstrap: str, topic: str, group: str, expected: int, timeout_s: float, state_dir: Path
) -> VariantResult:
    result = VariantResult()
    defaults = Settings()
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        datadir=str(state_dir),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_linger=defaults.producer_linger_s,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    seen: set[str] = set()
    sums = result.sums
    deadline = time.monotonic() + timeout_s
    stopping: list[asyncio.Future[None]] = []

    @app.agent(source, concurrency=1)
    async def payments(stream: Any) -> None:
        logging.getLogger().setLevel(logging.WARNING)  # the worker's spinner left it at DEBUG
        # Faust's own batching: one event per record, gathered for up to 0.1 s.
        async for events in stream.take_events(defaults.batch_max, within=0.1):
            now = time.time()
            if result.first_wall is None:
                result.first_wall = now
            for event in events:
                value = orjson.loads(event.message.value)
                event_id = value["event_id"]
                if event_id in seen:
                    result.duplicates += 1
                else:
                    seen.add(event_id)
                    account = value["account_id"]
                    sums[account] = sums.get(account, 0) + value["amount"]
            result.handled += len(events)
            result.last_wall = now
            if result.handled >= expected or time.monotonic() > deadline:
                result.timed_out = result.handled < expected
                stopping.append(asyncio.ensure_future(worker.stop()))  # not awaited: it stops us
                return

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return result


def main() -> None:
    variant_main(
        __doc__ or "",
        lambda a: run(a.bootstrap, a.topic, a.group, a.expected, a.timeout_s, a.state_dir),
    )


if __name__ == "__main__":
    main()
