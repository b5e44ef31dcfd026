"""Business metrics counted from real `fold` results, and the PostgreSQL query timer."""

from __future__ import annotations

from dataclasses import dataclass

from streams.ledger import count_business
from streams.resources import _log_query
from tables.ledger import ArchiveIndex, Limits, fold
from tables.messages import (
    AccountStatus,
    ChangeAccountStatus,
    CreditLeg,
    OpenAccount,
    Payment,
    PaymentKind,
    Position,
)
from web.metrics import REGISTRY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def at(offset: int) -> Position:
    return Position("atlas.payments.v1", 0, offset)


NO_ARCHIVE = ArchiveIndex(lambda account_id, seq: None)


def never(_: Position) -> bool:
    return False


def test_opened_closed_money_moved_and_settled_transfers_are_counted_once() -> None:
    opened = sample("atlas_accounts_opened_total")
    closed = sample("atlas_accounts_closed_total")
    deposits = sample("atlas_money_moved_total", currency="SEK", kind="deposit")
    transfers = sample("atlas_money_moved_total", currency="SEK", kind="transfer")
    completed = sample("atlas_transfers_total", status="completed")

    batch = [
        (OpenAccount("c1", "m-acc", "m@example.com", "SEK"), at(1)),
        (Payment("p1", PaymentKind.DEPOSIT, "m-acc", 700, "SEK", "2026-11-26T10:00:00Z"), at(2)),
        (CreditLeg("t1", "other", "m-acc", 250, "SEK"), at(3)),
    ]
    first = fold(None, batch, limits=Limits(), archive=NO_ARCHIVE, is_committed=never, now=1.0)
    count_business(first)
    # A replay of the same batch is all duplicates: nothing is counted again.
    again = fold(
        first.account,
        batch,
        limits=Limits(),
        archive=NO_ARCHIVE,
        is_committed=never,
        now=2.0,
    )
    count_business(again)
    # Closing needs a zero balance: refused first, then taken after a withdrawal.
    refused = fold(
        again.account,
        [(ChangeAccountStatus("c2", "m-acc", AccountStatus.CLOSED), at(4))],
        limits=Limits(),
        archive=NO_ARCHIVE,
        is_committed=never,
        now=3.0,
    )
    count_business(refused)
    assert sample("atlas_accounts_closed_total") == closed
    close = fold(
        refused.account,
        [
            (
                Payment("p2", PaymentKind.WITHDRAWAL, "m-acc", 950, "SEK", "2026-11-26T10:01Z"),
                at(5),
            ),
            (ChangeAccountStatus("c3", "m-acc", AccountStatus.CLOSED), at(6)),
        ],
        limits=Limits(),
        archive=NO_ARCHIVE,
        is_committed=never,
        now=4.0,
    )
    count_business(close)

    assert sample("atlas_accounts_opened_total") == opened + 1
    assert sample("atlas_money_moved_total", currency="SEK", kind="deposit") == deposits + 700
    assert sample("atlas_money_moved_total", currency="SEK", kind="transfer") == transfers + 250
    assert sample("atlas_transfers_total", status="completed") == completed + 1
    assert sample("atlas_accounts_closed_total") == closed + 1
    assert sample("atlas_money_moved_total", currency="SEK", kind="withdrawal") >= 950


@dataclass
class Logged:
    query: str
    elapsed: float
    exception: BaseException | None = None


def test_every_statement_is_timed_by_its_first_keyword() -> None:
    before = sample("atlas_pg_query_duration_seconds_count", statement="insert", outcome="ok")
    errors = sample("atlas_pg_query_duration_seconds_count", statement="select", outcome="error")
    _log_query(Logged("\n  INSERT INTO outbox VALUES ($1)", 0.002))
    _log_query(Logged("SELECT 1", 0.001, TimeoutError()))
    _log_query(Logged("VACUUM", 0.5))
    assert (
        sample("atlas_pg_query_duration_seconds_count", statement="insert", outcome="ok")
        == before + 1
    )
    assert (
        sample("atlas_pg_query_duration_seconds_count", statement="select", outcome="error")
        == errors + 1
    )
    assert sample("atlas_pg_query_duration_seconds_count", statement="other", outcome="ok") >= 1
