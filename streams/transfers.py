"""The transfers agent: transfer events (keyed by transfer id) into the transfers table."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from streams import wire
from streams.context import current_event
from streams.logs import get_logger
from streams.metrics import BATCH_DURATION, BATCH_SIZE, count_consumed
from streams.tracing import bound_event
from tables.messages import TransferEvent
from tables.store import LedgerTables
from tables.transfers import advance

log = get_logger(__name__)


@dataclass
class TransfersProcessor:
    tables: LedgerTables

    async def process(self, events: list[Any]) -> None:
        started = time.perf_counter()
        count_consumed(events)
        by_transfer: dict[str, list[tuple[TransferEvent, Any]]] = defaultdict(list)
        for event in events:
            try:
                decoded = wire.decode_transfer_event(event.message.value)
            except wire.BadMessage as bad:  # written only by the ledger agent: a bug, not input
                with bound_event(event):
                    log.error("undecodable transfer event", reason=bad.message)
                continue
            by_transfer[decoded.transfer_id].append((decoded, event))
        transfers = self.tables.transfers
        for transfer_id, items in by_transfer.items():
            raw = transfers.get(transfer_id.encode())
            record = advance(raw, [e for e, _ in items]) or raw
            # Written even when unchanged: the local store can be ahead of its changelog after
            # a crash (see streams.ledger), and a replay must put that state into the changelog.
            if record is not None:
                with current_event(items[-1][1]):
                    transfers[transfer_id.encode()] = record
        BATCH_SIZE.labels("transfers").observe(len(events))
        BATCH_DURATION.labels("transfers").observe(time.perf_counter() - started)
