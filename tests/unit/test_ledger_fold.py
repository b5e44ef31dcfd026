"""Exactly-once semantics of `tables.ledger.fold`: dedup marks, replays, resends, the archive.

The archive table is simulated by a dict fed from `BatchResult.archive_writes` under
`tables.ledger.archive_key`, exactly as `streams.ledger.LedgerProcessor` writes it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tables.ledger import (
    Account,
    ArchiveIndex,
    BatchResult,
    Limits,
    Mark,
    PendingArchive,
    archive_key,
    fold,
)
from tables.messages import (
    AccountMessage,
    AccountStatus,
    CreditLeg,
    Decision,
    OpenAccount,
    Payment,
    PaymentKind,
    PaymentOutcome,
    Position,
    RefundLeg,
    RequestTransfer,
    TransferEvent,
    TransferStatus,
)

PAYMENTS = "atlas.payments.v1"
COMMANDS = "atlas.ledger.commands.v1"
LEGS = "atlas.ledger.legs.v1"
NOW = 1_000_000.0
DEPOSIT, WITHDRAWAL = PaymentKind.DEPOSIT, PaymentKind.WITHDRAWAL
APPLIED, REJECTED, DUPLICATE = Decision.APPLIED, Decision.REJECTED, Decision.DUPLICATE


def at(offset: int, topic: str = PAYMENTS, partition: int = 0) -> Position:
    return Position(topic, partition, offset)


def pay(event_id: str, kind: PaymentKind, amount: int, account_id: str = "acc-1") -> Payment:
    return Payment(event_id, kind, account_id, amount, "EUR", "2026-11-26T10:00:00+00:00")


def deposit(event_id: str, amount: int = 100) -> Payment:
    return pay(event_id, DEPOSIT, amount)


def opened(balance: int = 0, account_id: str = "acc-1") -> Account:
    return Account(account_id, "o@example.com", "EUR", AccountStatus.OPEN, balance, version=1)


def never(_: Position) -> bool:
    return False


def committed_below(offset: int) -> Callable[[Position], bool]:
    """What `AtlasApp.is_committed` answers once the group committed `offset` (one partition)."""
    return lambda p: p.offset < offset


@dataclass
class Ledger:
    """One account and its archive table, folded batch by batch like the ledger agent does."""

    account: Account | None
    limits: Limits = field(default_factory=Limits)
    archive: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    index: ArchiveIndex = field(init=False)

    def __post_init__(self) -> None:
        self.index = ArchiveIndex(self.lookup)

    def lookup(self, account_id: str, seq: int) -> Mapping[str, list[Any]] | None:
        return self.archive.get(archive_key(account_id, seq))

    def fold(
        self,
        messages: Iterable[tuple[AccountMessage, Position]],
        *,
        is_committed: Callable[[Position], bool] = never,
        now: float = NOW,
    ) -> BatchResult:
        result = fold(
            self.account,
            list(messages),
            limits=self.limits,
            archive=self.index,
            is_committed=is_committed,
            now=now,
        )
        self.account = result.account
        self.store_archive(result)
        return result

    def store_archive(self, result: BatchResult) -> None:
        for seq, segment in result.archive_writes.items():
            assert result.account is not None
            key = archive_key(result.account.id, seq)
            if segment is None:
                self.archive.pop(key, None)
            else:
                self.archive[key] = segment

    @property
    def state(self) -> Account:
        assert self.account is not None
        return self.account


def outcome(result: BatchResult, index: int = 0) -> PaymentOutcome:
    effect = result.steps[index].effects[0]
    assert isinstance(effect, PaymentOutcome)
    return effect


# ---- one delivery, its replay, its resend ----------------------------------------------------


def test_a_message_is_applied_once_and_leaves_a_mark_in_the_record() -> None:
    ledger = Ledger(opened())
    result = ledger.fold([(deposit("e1", 250), at(0))])
    assert result.changed
    assert ledger.state.balance == 250
    assert ledger.state.version == 2
    (step,) = result.steps
    assert step.decision is APPLIED
    assert result.applied == [step]
    assert step.effects == [
        PaymentOutcome("e1", "acc-1", DEPOSIT, 250, "EUR", APPLIED, None),
    ]
    assert ledger.state.marks == (Mark("e1", APPLIED, None, at(0)),)


def test_a_replay_at_the_same_position_re_emits_the_original_decision() -> None:
    ledger = Ledger(opened())
    first = ledger.fold([(deposit("e1", 250), at(0))])
    after_first = ledger.state
    replay = ledger.fold([(deposit("e1", 250), at(0))])
    assert ledger.state == after_first  # no state change
    assert not replay.changed
    assert replay.applied == []
    assert replay.steps[0].decision is APPLIED
    assert replay.steps[0].effects == first.steps[0].effects


def test_a_replay_re_emits_a_rejection_even_if_the_rule_would_now_pass() -> None:
    ledger = Ledger(opened())
    ledger.fold([(pay("w1", WITHDRAWAL, 500), at(0)), (deposit("d1", 1000), at(1))])
    assert ledger.state.balance == 1000
    replay = ledger.fold([(pay("w1", WITHDRAWAL, 500), at(0))])
    assert outcome(replay) == PaymentOutcome(
        "w1", "acc-1", WITHDRAWAL, 500, "EUR", REJECTED, "insufficient funds"
    )
    assert ledger.state.balance == 1000


def test_a_resend_at_another_position_is_a_duplicate_without_state_change() -> None:
    ledger = Ledger(opened())
    ledger.fold([(deposit("e1", 250), at(0))])
    before = ledger.state
    resend = ledger.fold([(deposit("e1", 250), at(7))])
    assert ledger.state == before
    assert not resend.changed
    assert resend.applied == []
    assert resend.steps[0].decision is DUPLICATE
    assert outcome(resend) == PaymentOutcome("e1", "acc-1", DEPOSIT, 250, "EUR", DUPLICATE, None)


def test_a_resend_on_another_partition_of_the_same_offset_is_a_duplicate() -> None:
    ledger = Ledger(opened())
    ledger.fold([(deposit("e1"), at(3, partition=0))])
    resend = ledger.fold([(deposit("e1"), at(3, partition=1))])
    assert resend.steps[0].decision is DUPLICATE
    assert ledger.state.balance == 100


def test_a_duplicate_within_one_batch_is_applied_once() -> None:
    ledger = Ledger(opened())
    result = ledger.fold([(deposit("e1"), at(0)), (deposit("e2"), at(1)), (deposit("e1"), at(2))])
    assert [s.decision for s in result.steps] == [APPLIED, APPLIED, DUPLICATE]
    assert ledger.state.balance == 200
    assert [m.key for m in ledger.state.marks] == ["e1", "e2"]


def test_a_rejected_payment_to_an_existing_account_is_marked_too() -> None:
    ledger = Ledger(opened())
    ledger.fold([(pay("w1", WITHDRAWAL, 10), at(0))])
    assert ledger.state.balance == 0
    assert ledger.state.version == 1  # a rejection is no state change...
    assert ledger.state.find_mark("w1") == Mark("w1", REJECTED, "insufficient funds", at(0))
    ledger.fold([(deposit("d1", 50), at(1))])
    resend = ledger.fold([(pay("w1", WITHDRAWAL, 10), at(2))])
    assert resend.steps[0].decision is DUPLICATE  # ...but it is decided once
    assert ledger.state.balance == 50


def test_open_account_then_payments_in_one_batch() -> None:
    ledger = Ledger(None)
    result = ledger.fold(
        [
            (OpenAccount("c1", "acc-1", "o@example.com", "EUR"), at(0, COMMANDS)),
            (deposit("e1", 70), at(0)),
            (OpenAccount("c1", "acc-1", "o@example.com", "EUR"), at(9, COMMANDS)),
        ]
    )
    assert [s.decision for s in result.steps] == [APPLIED, APPLIED, APPLIED]
    assert result.steps[2].effects == []  # a resent command: the original decision, no effects
    assert ledger.state.balance == 70
    assert ledger.state.version == 2


def test_a_payment_to_an_unknown_account_only_leaves_a_mark() -> None:
    ledger = Ledger(None)
    result = ledger.fold([(deposit("e1"), at(0))])
    assert outcome(result).status is REJECTED
    assert outcome(result).reason == "unknown account"
    # The record that keeps the mark is no account: no balance, no owner, not readable.
    assert result.changed and result.account is not None
    assert result.account.status is AccountStatus.ABSENT and not result.account.opened
    assert (result.account.balance, result.account.version) == (0, 0)
    assert result.account.marks == (Mark("e1", REJECTED, "unknown account", at(0)),)


# ---- transfer legs ---------------------------------------------------------------------------


def request(amount: int = 300) -> RequestTransfer:
    return RequestTransfer("tr-1", "acc-1", "acc-2", amount, "EUR")


def test_a_duplicate_transfer_request_re_emits_the_credit_leg_without_a_second_debit() -> None:
    ledger = Ledger(opened(balance=1000))
    first = ledger.fold([(request(), at(0, COMMANDS))])
    assert ledger.state.balance == 700
    resend = ledger.fold([(request(), at(5, COMMANDS))])
    assert ledger.state.balance == 700
    assert not resend.changed
    assert resend.steps[0].decision is APPLIED
    assert (
        resend.steps[0].effects
        == first.steps[0].effects
        == [
            CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR"),
            TransferEvent("tr-1", TransferStatus.DEBITED, "acc-1", "acc-2", 300, "EUR"),
        ]
    )


def test_a_duplicate_rejected_transfer_request_re_emits_the_rejection() -> None:
    ledger = Ledger(opened(balance=100))
    ledger.fold([(request(300), at(0, COMMANDS))])
    ledger.fold([(deposit("d1", 1000), at(0))])
    resend = ledger.fold([(request(300), at(1, COMMANDS))])
    assert ledger.state.balance == 1100
    assert resend.steps[0].effects == [
        TransferEvent(
            "tr-1", TransferStatus.REJECTED, "acc-1", "acc-2", 300, "EUR", "insufficient funds"
        )
    ]


def test_a_duplicate_credit_leg_re_emits_its_completion_or_its_refund() -> None:
    good = Ledger(opened(account_id="acc-2"))
    leg = CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR")
    good.fold([(leg, at(0, LEGS))])
    again = good.fold([(leg, at(4, LEGS))])
    assert good.state.balance == 300
    assert again.steps[0].effects == [
        TransferEvent("tr-1", TransferStatus.COMPLETED, "acc-1", "acc-2", 300, "EUR")
    ]
    frozen = Ledger(opened(account_id="acc-2"))
    frozen.account = Account("acc-2", "o@example.com", "EUR", AccountStatus.FROZEN, 0, 1)
    frozen.fold([(leg, at(0, LEGS))])
    again = frozen.fold([(leg, at(4, LEGS))])
    assert again.steps[0].effects == [
        RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", "account is frozen")
    ]
    assert frozen.state.balance == 0


def test_a_duplicate_refund_credits_once() -> None:
    ledger = Ledger(opened(balance=700))
    leg = RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", "account is closed")
    ledger.fold([(leg, at(0, LEGS))])
    again = ledger.fold([(leg, at(1, LEGS))])
    assert ledger.state.balance == 1000
    assert [type(e) for e in again.steps[0].effects] == [TransferEvent]


def test_a_replayed_credit_leg_keeps_its_decision_after_the_account_is_opened() -> None:
    """A credit leg for an account that does not exist yet bounces: a refund goes back.

    If the worker crashes before the commit, after the destination's `OpenAccount` (same
    partition, later) was written, the leg is read again at the same position. A replay must
    re-emit what was decided (the refund, already sent and applied at the source), not credit
    the destination as well: that would create the transfer's amount out of nothing.
    """
    ledger = Ledger(None)
    leg = CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR")
    first = ledger.fold([(leg, at(0, LEGS))])
    refund = RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", "unknown account")
    assert first.steps[0].effects == [refund]
    ledger.fold([(OpenAccount("c2", "acc-2", "o@example.com", "EUR"), at(0, COMMANDS))])

    replay = ledger.fold([(leg, at(0, LEGS))])
    assert replay.steps[0].effects == [refund]
    assert ledger.state.balance == 0


def test_a_replayed_payment_keeps_its_decision_after_the_account_is_opened() -> None:
    """Same for a payment: its producer was told `rejected`, a replay must say it again."""
    ledger = Ledger(None)
    first = ledger.fold([(deposit("e1", 100), at(0))])
    assert outcome(first).status is REJECTED
    ledger.fold([(OpenAccount("c1", "acc-1", "o@example.com", "EUR"), at(0, COMMANDS))])

    replay = ledger.fold([(deposit("e1", 100), at(0))])
    assert outcome(replay) == outcome(first)
    assert ledger.state.balance == 0


# ---- marks live in the account record --------------------------------------------------------


def through_json(account: Account) -> Account:
    """What a JSON table value becomes after the changelog: tuples turn into lists."""
    return Account.from_json(json.loads(json.dumps(account.to_json())))


def test_marks_survive_the_account_record_round_trip() -> None:
    ledger = Ledger(opened(), limits=Limits(window=2))
    for i in range(4):
        ledger.fold([(deposit(f"e{i}"), at(i))], is_committed=committed_below(i))
    ledger.fold([(pay("w", WITHDRAWAL, 10**6), at(4))], is_committed=committed_below(3))
    account = ledger.state
    assert account.pending is not None and account.archive  # all fields in use
    restored = through_json(account)
    assert restored == account
    # and the restored record still knows what it applied
    ledger.account = restored
    resend = ledger.fold([(deposit("e3"), at(9))])
    assert resend.steps[0].decision is DUPLICATE
    assert ledger.state.balance == 400


def test_an_old_record_without_dedup_fields_loads() -> None:
    raw = opened(balance=5).to_json()
    for key in ("marks", "archive", "next_seq", "pending"):
        del raw[key]
    assert Account.from_json(raw) == opened(balance=5)


# ---- the two-phase archive -------------------------------------------------------------------

WINDOW = 4


def feed(ledger: Ledger, offsets: range, is_committed: Callable[[Position], bool]) -> BatchResult:
    return ledger.fold([(deposit(f"e{i}"), at(i)) for i in offsets], is_committed=is_committed)


def segment_of(*offsets: int) -> dict[str, list[Any]]:
    return {f"e{i}": ["applied", None] for i in offsets}


def test_no_archive_while_the_oldest_marks_are_not_committed() -> None:
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    result = feed(ledger, range(3 * WINDOW), never)
    assert result.archive_writes == {}
    assert ledger.state.pending is None
    assert len(ledger.state.marks) == 3 * WINDOW
    # only the committed marks move, however many more there are
    result = feed(ledger, range(3 * WINDOW, 3 * WINDOW + 1), committed_below(WINDOW - 1))
    assert result.archive_writes == {0: segment_of(*range(WINDOW - 1))}
    assert ledger.state.pending == PendingArchive(0, WINDOW - 1, at(3 * WINDOW))


def test_no_archive_below_twice_the_window() -> None:
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    result = feed(ledger, range(2 * WINDOW - 1), committed_below(100))
    assert result.archive_writes == {}
    assert ledger.state.archive == ()


def test_the_archive_moves_marks_in_two_phases() -> None:
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    feed(ledger, range(2 * WINDOW), never)
    assert len(ledger.state.marks) == 2 * WINDOW

    # phase 1: every committed mark but the newest window -> a segment; marks kept, pending set
    result = feed(ledger, range(8, 9), committed_below(8))
    assert result.changed
    assert result.archive_writes == {0: segment_of(0, 1, 2, 3, 4)}
    assert ledger.state.pending == PendingArchive(0, 5, at(8))
    assert ledger.state.archive == ((0, NOW),)
    assert ledger.state.next_seq == 1
    assert len(ledger.state.marks) == 9  # nothing dropped yet

    # the segment's own position is not committed: rewrite it, under the newest position
    result = feed(ledger, range(9, 10), committed_below(8))
    assert result.archive_writes == {0: segment_of(0, 1, 2, 3, 4)}
    assert ledger.state.pending == PendingArchive(0, 5, at(9))
    assert len(ledger.state.marks) == 10

    # committed up to 9 only: the pending position (9) is still not committed
    result = feed(ledger, range(10, 11), committed_below(9))
    assert result.archive_writes == {0: segment_of(0, 1, 2, 3, 4)}
    assert ledger.state.pending == PendingArchive(0, 5, at(10))
    assert len(ledger.state.marks) == 11

    # phase 2: the pending position is committed, so the segment is durable: drop the marks
    result = feed(ledger, range(11, 12), committed_below(11))
    assert result.changed
    assert result.archive_writes == {}
    assert ledger.state.pending is None
    assert [m.key for m in ledger.state.marks] == [f"e{i}" for i in range(5, 12)]
    assert ledger.state.archive == ((0, NOW),)
    assert ledger.archive == {archive_key("acc-1", 0): segment_of(0, 1, 2, 3, 4)}


def test_the_second_segment_takes_the_next_seq() -> None:
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    feed(ledger, range(9), committed_below(8))  # phase 1 of segment 0 (e0..e4)
    feed(ledger, range(9, 10), committed_below(9))  # phase 2: drop; e5..e9 left
    result = feed(ledger, range(10, 13), committed_below(13))  # 8 marks, all committed
    assert result.archive_writes == {1: segment_of(5, 6, 7, 8)}
    assert ledger.state.archive == ((0, NOW), (1, NOW))
    assert ledger.state.pending == PendingArchive(1, 4, at(12))


def test_a_batch_of_duplicates_still_completes_the_archive() -> None:
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    feed(ledger, range(9), committed_below(8))
    assert ledger.state.pending is not None
    result = ledger.fold([(deposit("e5"), at(20))], is_committed=committed_below(20))
    assert result.steps[0].decision is DUPLICATE
    assert result.changed  # the record changed: its marks were dropped
    assert ledger.state.pending is None
    assert len(ledger.state.marks) == 4


def test_a_busy_account_keeps_a_bounded_number_of_marks() -> None:
    """The record holds about `2 * window` marks; older, committed ones move to the archive.

    Here every batch brings 10 payments for one account and is committed before the next one
    (the best case for archiving). The record must stay bounded: it is rewritten in full with
    every batch, and a Kafka record has a size limit (1 MB by default).
    """
    batch = 10
    ledger = Ledger(opened(), limits=Limits(window=WINDOW))
    sizes = []
    for n in range(30):
        feed(ledger, range(n * batch, (n + 1) * batch), committed_below(n * batch))
        sizes.append(len(ledger.state.marks))
    assert ledger.state.balance == 30 * batch * 100
    assert max(sizes) <= WINDOW + 3 * batch
    assert max(sizes[-10:]) <= max(sizes[:10]) + batch  # bounded, not growing


def archived_ledger(limits: Limits) -> Ledger:
    """An account whose first four deposits (e0..e3) live only in the archive."""
    ledger = Ledger(opened(), limits=limits)
    feed(ledger, range(9), committed_below(8))
    feed(ledger, range(9, 10), committed_below(9))
    assert ledger.state.find_mark("e0") is None
    assert ledger.state.balance == 1000
    return ledger


def test_a_late_duplicate_of_an_archived_event_is_still_caught() -> None:
    ledger = archived_ledger(Limits(window=WINDOW))
    before = ledger.state
    late = ledger.fold([(deposit("e2"), at(50))], is_committed=committed_below(50))
    assert late.steps[0].decision is DUPLICATE
    assert outcome(late).status is DUPLICATE
    assert ledger.state.balance == before.balance
    assert ledger.state.marks == before.marks


def test_without_the_archive_table_the_late_duplicate_would_be_applied() -> None:
    """The control for the test above: the archive lookup is what catches it."""
    ledger = archived_ledger(Limits(window=WINDOW))
    ledger.archive.clear()
    ledger.index.forget()  # the index is a cache of the archive table
    late = ledger.fold([(deposit("e2"), at(50))], is_committed=committed_below(50))
    assert late.steps[0].decision is APPLIED
    assert ledger.state.balance == 1100


def test_a_late_duplicate_of_an_archived_transfer_request_re_emits_its_credit_leg() -> None:
    ledger = Ledger(opened(balance=1000), limits=Limits(window=2))
    ledger.fold([(request(300), at(0, COMMANDS))])
    ledger.fold([(deposit(f"e{i}"), at(i)) for i in range(1, 4)], is_committed=committed_below(4))
    ledger.fold([(deposit("e4"), at(4))], is_committed=committed_below(5))
    assert ledger.state.find_mark("tr-1:debit") is None
    balance = ledger.state.balance
    late = ledger.fold([(request(300), at(9, COMMANDS))], is_committed=committed_below(9))
    assert late.steps[0].decision is APPLIED
    assert CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR") in late.steps[0].effects
    assert ledger.state.balance == balance


def test_archived_segments_expire_after_the_horizon() -> None:
    horizon = 3600.0
    ledger = archived_ledger(Limits(window=WINDOW, archive_horizon_s=horizon))

    # at the horizon exactly the segment still counts
    edge = ledger.fold([(deposit("e1"), at(50))], now=NOW + horizon)
    assert edge.steps[0].decision is DUPLICATE
    assert edge.archive_writes == {}

    # past it, the segment is deleted and no longer catches duplicates
    later = NOW + horizon + 1
    result = ledger.fold([(deposit("e1"), at(51))], now=later)
    assert result.archive_writes == {0: None}
    assert result.changed
    assert ledger.state.archive == ()
    assert ledger.archive == {}
    assert result.steps[0].decision is APPLIED
    assert ledger.state.balance == 1100


# ---- property: at-least-once delivery, crashes and replays -----------------------------------


@dataclass
class Worker:
    """A partition's consumer with a crash model faithful to Kafka.

    Records produced since the last commit are in flight: a crash keeps an ordered prefix of
    each table's changelog records (two tables, two topics: independently), and reading resumes
    at the committed offset, i.e. a replay at the same positions. A commit waits for every
    record produced before it (`SafeProducer.flush`).
    """

    rng: random.Random
    limits: Limits
    account: Account
    archive: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    committed: int = 0
    unflushed_accounts: list[Account] = field(default_factory=list)
    unflushed_archive: list[tuple[str, dict[str, list[Any]] | None]] = field(default_factory=list)
    durable_account: Account | None = None
    durable_archive: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    index: ArchiveIndex = field(init=False)

    def __post_init__(self) -> None:
        self.durable_account = self.account
        self.index = ArchiveIndex(lambda acc, seq: self.archive.get(archive_key(acc, seq)))

    def process(self, batch: list[tuple[Payment, Position]], now: float) -> BatchResult:
        result = fold(
            self.account,
            batch,
            limits=self.limits,
            archive=self.index,
            is_committed=lambda p: p.offset < self.committed,
            now=now,
        )
        assert result.account is not None
        if result.changed:
            self.account = result.account
            self.unflushed_accounts.append(result.account)
        for seq, segment in result.archive_writes.items():
            key = archive_key(result.account.id, seq)
            self.unflushed_archive.append((key, segment))
            self._write(self.archive, key, segment)
        return result

    @staticmethod
    def _write(table: dict[str, Any], key: str, segment: dict[str, list[Any]] | None) -> None:
        if segment is None:
            table.pop(key, None)
        else:
            table[key] = segment

    def commit(self, offset: int) -> None:
        self.durable_account = self.account
        self.durable_archive = dict(self.archive)
        self.unflushed_accounts.clear()
        self.unflushed_archive.clear()
        self.committed = offset

    def crash(self) -> None:
        kept = self.rng.randint(0, len(self.unflushed_accounts))
        if kept:
            self.durable_account = self.unflushed_accounts[kept - 1]
        for key, segment in self.unflushed_archive[
            : self.rng.randint(0, len(self.unflushed_archive))
        ]:
            self._write(self.durable_archive, key, segment)
        assert self.durable_account is not None
        self.account = self.durable_account
        self.archive = dict(self.durable_archive)
        self.index.forget()  # a new process: its index is built from the durable table
        self.unflushed_accounts.clear()
        self.unflushed_archive.clear()


def payment_log(rng: random.Random, size: int) -> list[Payment]:
    log: list[Payment] = []
    for offset in range(size):
        if log and rng.random() < 0.25:
            log.append(rng.choice(log))  # a producer's resend, possibly much later
        else:
            kind = DEPOSIT if rng.random() < 0.55 else WITHDRAWAL
            log.append(pay(f"evt-{offset}", kind, rng.randint(1, 400)))
    return log


def reference(log: list[Payment]) -> tuple[int, int, list[Decision]]:
    """Each event id decided once, at its first delivery; later deliveries are duplicates."""
    balance, applied, seen, statuses = 0, 0, set(), []
    for p in log:
        if p.event_id in seen:
            statuses.append(DUPLICATE)
            continue
        seen.add(p.event_id)
        if p.kind is WITHDRAWAL and p.amount > balance:
            statuses.append(REJECTED)
            continue
        balance += p.amount if p.kind is DEPOSIT else -p.amount
        applied += 1
        statuses.append(APPLIED)
    return balance, applied, statuses


@pytest.mark.parametrize("seed", range(6))
def test_crashes_replays_and_resends_give_the_reference_balance(seed: int) -> None:
    rng = random.Random(seed)
    log = payment_log(rng, 400)
    expected_balance, expected_applied, expected_status = reference(log)
    worker = Worker(rng, Limits(window=4), opened())

    emitted: dict[int, set[Decision]] = {}
    cursor, crashes, replayed, now = 0, 0, 0, NOW
    while cursor < len(log):
        end = min(len(log), cursor + rng.randint(1, 10))
        batch = [(log[o], at(o)) for o in range(cursor, end)]
        if cursor < max(emitted, default=-1):
            replayed += 1
        result = worker.process(batch, now)
        for step in result.steps:
            (effect,) = step.effects
            assert isinstance(effect, PaymentOutcome)
            emitted.setdefault(step.position.offset, set()).add(effect.status)
        now += 1.0
        if rng.random() < 0.15:
            worker.crash()
            crashes += 1
            cursor = worker.committed
        else:
            cursor = end
            if rng.random() < 0.5:
                worker.commit(cursor)

    account = worker.account
    assert account.balance == expected_balance
    assert account.version == 1 + expected_applied
    assert account.balance >= 0
    # every delivery, however often it was replayed, reported what the reference decided
    assert emitted == {o: {s} for o, s in enumerate(expected_status)}
    # the scenario exercised what it claims to
    assert crashes > 3 and replayed > 3
    assert DUPLICATE in expected_status
    assert account.next_seq > 3, "the archive was never used"


def test_activity_counts_applied_payments_per_hour_and_rolls_over() -> None:
    ledger = Ledger(opened(balance=1000))
    hour = 3600 * 500_000
    ledger.fold([(deposit("a1", 100), at(1)), (deposit("a2", 50), at(2))], now=hour + 10)
    ledger.fold([(deposit("a2", 50), at(2))], now=hour + 20)  # a replay: not counted again
    assert ledger.state.activity_at(hour + 30) == {"count": 2, "volume": 150}
    ledger.fold([(pay("w1", WITHDRAWAL, 70), at(3))], now=hour + 3600 + 5)  # the next hour
    assert ledger.state.activity_at(hour + 3600 + 6) == {"count": 1, "volume": 70}
    assert ledger.state.activity_at(hour + 7200 + 1) == {"count": 0, "volume": 0}
    assert Account.from_json(ledger.state.to_json()) == ledger.state  # kept in the record
