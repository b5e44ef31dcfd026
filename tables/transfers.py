"""A transfer's record: its status only moves forward, and its first final status sticks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tables.messages import TransferEvent, TransferStatus


def advance(
    current: Mapping[str, Any] | None, events: Iterable[TransferEvent]
) -> dict[str, Any] | None:
    """The record after `events`, or None when nothing changes (replays and stale events)."""
    record = dict(current) if current is not None else None
    changed = False
    for event in events:
        status = TransferStatus(record["status"]) if record is not None else None
        if status is not None and event.status.rank <= status.rank:
            continue  # a replayed or late event: the record already moved past it
        record = {
            "transfer_id": event.transfer_id,
            "status": event.status.value,
            "reason": event.reason,
            "from_account": event.from_account,
            "to_account": event.to_account,
            "amount": event.amount,
            "currency": event.currency,
        }
        changed = True
    return record if changed else None
