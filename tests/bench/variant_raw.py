"""Variant (b): a bare aiokafka consumer loop, `getmany` and orjson decode, nothing else.

Its window starts when the partitions are assigned, not at the first message handled: aiokafka
fetches in the background from assignment on, and for a loop this cheap the fetching is the
work, so a window from the first message would leave out the first megabytes fetched.

`python -m tests.bench.variant_raw --topic T --group G --expected N --result out.json`
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from tests.bench.variant_common import VariantResult, variant_main


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, result: VariantResult) -> None:
        self.result = result

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned and self.result.assigned_wall is None:
            self.result.assigned_wall = time.time()


async def consume(
    bootstrap: str, topic: str, group: str, expected: int, timeout_s: float
) -> VariantResult:
    result = VariantResult()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    consumer.subscribe([topic], listener=_Assigned(result))
    loads = orjson.loads
    deadline = time.monotonic() + timeout_s
    try:
        while result.handled < expected:
            if time.monotonic() > deadline:
                result.timed_out = True
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if not batches:
                continue
            if result.first_wall is None:
                result.first_wall = time.time()
            for records in batches.values():
                for record in records:
                    try:
                        loads(record.value)
                    except orjson.JSONDecodeError:
                        result.decode_errors += 1
                    result.handled += 1
            result.last_wall = time.time()
    finally:
        await consumer.stop()
    return result


def main() -> None:
    variant_main(
        __doc__ or "",
        lambda a: asyncio.run(consume(a.bootstrap, a.topic, a.group, a.expected, a.timeout_s)),
    )


if __name__ == "__main__":
    main()
