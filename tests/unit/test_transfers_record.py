"""A transfer's record (`tables.transfers.advance`): forward only, first final status sticks."""

from __future__ import annotations

from typing import Any

import pytest

from tables.messages import TransferEvent, TransferStatus
from tables.transfers import advance

PENDING, DEBITED, COMPLETED = (
    TransferStatus.PENDING,
    TransferStatus.DEBITED,
    TransferStatus.COMPLETED,
)
REJECTED, REVERSED = TransferStatus.REJECTED, TransferStatus.REVERSED
FINAL = [COMPLETED, REJECTED, REVERSED]


def event(status: TransferStatus, reason: str | None = None) -> TransferEvent:
    return TransferEvent("tr-1", status, "acc-1", "acc-2", 300, "EUR", reason)


def record(status: TransferStatus, reason: str | None = None) -> dict[str, Any]:
    return {
        "transfer_id": "tr-1",
        "status": status.value,
        "reason": reason,
        "from_account": "acc-1",
        "to_account": "acc-2",
        "amount": 300,
        "currency": "EUR",
    }


def test_status_order() -> None:
    assert [s.rank for s in (PENDING, DEBITED, COMPLETED, REJECTED, REVERSED)] == [0, 1, 2, 2, 2]
    assert [s.final for s in TransferStatus] == [False, False, True, True, True]


def test_the_first_event_creates_the_record() -> None:
    assert advance(None, [event(DEBITED)]) == record(DEBITED)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (PENDING, DEBITED),
        (PENDING, COMPLETED),
        (DEBITED, COMPLETED),
        (DEBITED, REVERSED),
        (PENDING, REJECTED),
    ],
)
def test_the_status_moves_forward(before: TransferStatus, after: TransferStatus) -> None:
    assert advance(record(before), [event(after)]) == record(after)


@pytest.mark.parametrize(
    ("current", "late"),
    [(DEBITED, PENDING), (COMPLETED, DEBITED), (COMPLETED, PENDING), (REVERSED, DEBITED)],
)
def test_a_stale_event_changes_nothing(current: TransferStatus, late: TransferStatus) -> None:
    assert advance(record(current), [event(late)]) is None


@pytest.mark.parametrize("status", list(TransferStatus))
def test_a_replayed_event_changes_nothing(status: TransferStatus) -> None:
    assert advance(record(status), [event(status)]) is None


@pytest.mark.parametrize("first", FINAL)
@pytest.mark.parametrize("second", FINAL)
def test_the_first_final_status_sticks(first: TransferStatus, second: TransferStatus) -> None:
    current = advance(None, [event(DEBITED), event(first, reason="r1")])
    assert current == record(first, reason="r1")
    assert advance(current, [event(second, reason="r2")]) is None


def test_a_batch_takes_the_furthest_status_whatever_the_order() -> None:
    assert advance(None, [event(DEBITED), event(COMPLETED)]) == record(COMPLETED)
    assert advance(None, [event(COMPLETED), event(DEBITED)]) == record(COMPLETED)
    assert advance(
        record(DEBITED), [event(DEBITED), event(REVERSED, "frozen"), event(DEBITED)]
    ) == (record(REVERSED, "frozen"))


def test_a_batch_of_only_stale_events_is_no_change() -> None:
    assert advance(record(COMPLETED), [event(DEBITED), event(PENDING), event(COMPLETED)]) is None


def test_no_events_no_change() -> None:
    assert advance(None, []) is None
    assert advance(record(DEBITED), []) is None


def test_the_reason_of_the_final_status_is_kept() -> None:
    assert advance(record(PENDING), [event(REJECTED, "insufficient funds")]) == record(
        REJECTED, "insufficient funds"
    )


def test_the_current_record_is_not_mutated() -> None:
    current = record(DEBITED)
    snapshot = dict(current)
    advance(current, [event(COMPLETED)])
    assert current == snapshot
