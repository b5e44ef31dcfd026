"""Variant (c): a Quix Streams application doing Atlas's payment work without Atlas.

Per account (the message key), its own RocksDB state holds a dict of the event ids already
seen and the running sum: a seen id is counted as a duplicate and skipped, a new one is added
to the sum. State changes reach Quix's changelog topic at each checkpoint, as Quix does by
default. The last sum each account produced is what the parent compares with the expected one.

`python -m tests.bench.variant_quix --topic T --group G --expected N --result out.json
 --state-dir DIR`
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from quixstreams import Application
from quixstreams.state import State

from tests.bench.variant_common import VariantResult, variant_main


def run(
    bootstrap: str, topic: str, group: str, expected: int, timeout_s: float, state_dir: str
) -> VariantResult:
    result = VariantResult()
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    source = app.topic(topic, key_deserializer="str", value_deserializer="json")
    sums = result.sums

    def handle(value: dict[str, Any], state: State[str, Any]) -> int:
        now = time.time()
        if result.first_wall is None:
            result.first_wall = now
        event_id = value["event_id"]
        seen: dict[str, int] = state.get("seen") or {}
        total: int = state.get("sum", 0)
        if event_id in seen:
            result.duplicates += 1
        else:
            seen[event_id] = 1
            total += value["amount"]
            state.set("seen", seen)
            state.set("sum", total)
        sums[value["account_id"]] = total
        result.handled += 1
        result.last_wall = now
        if result.handled >= expected:
            app.stop()
        return total

    app.dataframe(source).apply(handle, stateful=True)

    def expire() -> None:
        result.timed_out = True
        app.stop()

    watchdog = threading.Timer(timeout_s, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        app.run()
    finally:
        watchdog.cancel()
    return result


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    variant_main(
        __doc__ or "",
        lambda a: run(a.bootstrap, a.topic, a.group, a.expected, a.timeout_s, str(a.state_dir)),
    )


if __name__ == "__main__":
    main()
