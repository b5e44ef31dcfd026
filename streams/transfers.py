"""The transfers agent: transfer events (keyed by transfer id) into the transfers table.

A batch's records are written per partition in one step, then sent to the changelog in one
send (`tables.store.PartitionStore`, as the ledger does).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import wire
from streams.logs import get_logger
from streams.metrics import BATCH_DURATION, BATCH_SIZE, count_consumed
from streams.tracing import bound_event
from tables.messages import TransferEvent
from tables.store import LedgerTables, PartitionStore
from tables.transfers import advance

log = get_logger(__name__)


@dataclass
class TransfersProcessor:
    tables: LedgerTables
    _store: PartitionStore | None = field(default=None, init=False, repr=False)

    async def process(self, records: Sequence[Any]) -> None:
        if not records:
            return
        started = time.perf_counter()
        count_consumed(records)
        by_transfer: dict[str, list[TransferEvent]] = defaultdict(list)
        home: dict[str, int] = {}
        for message in records:
            try:
                decoded = wire.decode_transfer_event(message.value)
            except wire.BadMessage as bad:  # written only by the ledger agent: a bug, not input
                with bound_event(message):
                    log.error("undecodable transfer event", reason=bad.message)
                continue
            by_transfer[decoded.transfer_id].append(decoded)
            home[decoded.transfer_id] = message.partition
        if self._store is None:
            self._store = PartitionStore(self.tables.transfers)
        store = self._store
        writes: dict[int, list[tuple[bytes, bytes | None]]] = defaultdict(list)
        for transfer_id, events in by_transfer.items():
            key, partition = transfer_id.encode(), home[transfer_id]
            raw = store.get(partition, key)
            record = advance(raw, events) or raw
            # Written even when unchanged: the local store can be ahead of its changelog after
            # a crash (see streams.ledger), and a replay must put that state into the changelog.
            if record is not None:
                writes[partition].append((key, orjson.dumps(record)))
        # State, then the same bytes to the changelog (as the ledger does).
        producer = self.tables.transfers.app.producer
        for partition, items in writes.items():
            store.write(partition, items)
        await producer.appended()  # the last batch's sends first (as the ledger does)
        for partition, items in writes.items():
            await store.send_changelog(producer, partition, items)
        BATCH_SIZE.labels("transfers").observe(len(records))
        BATCH_DURATION.labels("transfers").observe(time.perf_counter() - started)
