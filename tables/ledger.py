"""Accounts and their pure state transitions, with exactly-once effects.

Every message that reaches an account leaves a dedup mark *in the account record itself*, so the
change and the proof that it happened are one changelog record: a crash persists both or
neither. Marks of long-committed messages move in segments to an archive table (the long-horizon
dedup store) in two phases, so a mark leaves the record only once its archived copy is durable:

1. when the record holds `2 * window` marks, the oldest ones read at committed positions
   (all but the newest `window`) are written as a segment, and the record notes it as pending
   with the position of the message under which the segment was written;
2. once that position is committed too (the commit waits for every record produced before it),
   the marks are dropped from the record. Until then the segment is rewritten with each batch.

A duplicate skips the state change but re-emits its effects: the first run may have crashed
after the change and before the sends. A mark remembers where its message was read, which tells
a replay after a crash (same position: re-emit what was decided) from a producer's resend
(another position: a `duplicate` outcome).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tables.currencies import is_currency
from tables.messages import (
    AccountMessage,
    AccountStatus,
    ChangeAccountStatus,
    CreditLeg,
    Decision,
    Effect,
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

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_amount: int = 100_000_000_000  # minor units
    window: int = 32  # marks kept per account before archiving starts
    archive_horizon_s: float = 7 * 24 * 3600.0  # how long archived marks catch late duplicates


@dataclass(frozen=True, slots=True)
class Mark:
    key: str
    decision: Decision  # applied or rejected
    reason: str | None
    position: Position
    # The JSON form, made once per mark (a mark never changes): every write of a record
    # serialises all its marks, up to 2 * window of them.
    _json: list[Any] | None = field(default=None, init=False, compare=False, repr=False)

    def to_json(self) -> list[Any]:
        if self._json is None:
            p = self.position
            json = [self.key, self.decision.value, self.reason, p.topic, p.partition, p.offset]
            object.__setattr__(self, "_json", json)
            return json
        return self._json

    @classmethod
    def from_json(cls, raw: list[Any]) -> Mark:
        key, decision, reason, topic, partition, offset = raw
        mark = cls(key, Decision(decision), reason, Position(topic, partition, offset))
        object.__setattr__(mark, "_json", raw)
        return mark


@dataclass(frozen=True, slots=True)
class PendingArchive:
    seq: int
    count: int  # how many of the oldest marks the segment holds
    position: Position  # where the segment was last written


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    owner_email: str
    currency: str
    status: AccountStatus
    balance: int = 0
    version: int = 0
    marks: tuple[Mark, ...] = ()
    archive: tuple[tuple[int, float], ...] = ()  # (segment seq, created at) of live segments
    next_seq: int = 0
    pending: PendingArchive | None = None
    # Applied payments in the current hour: (hour start, epoch s; count; volume). Kept in the
    # record so a batch still writes one record per account.
    activity: tuple[int, int, int] = (0, 0, 0)

    def find_mark(self, key: str) -> Mark | None:
        for mark in reversed(self.marks):
            if mark.key == key:
                return mark
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner_email": self.owner_email,
            "currency": self.currency,
            "status": self.status.value,
            "balance": self.balance,
            "version": self.version,
            "marks": [m.to_json() for m in self.marks],
            "archive": [list(a) for a in self.archive],
            "next_seq": self.next_seq,
            "activity": list(self.activity),
            "pending": None
            if self.pending is None
            else [
                self.pending.seq,
                self.pending.count,
                self.pending.position.topic,
                self.pending.position.partition,
                self.pending.position.offset,
            ],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Account:
        pending = raw.get("pending")
        return cls(
            id=raw["id"],
            owner_email=raw["owner_email"],
            currency=raw["currency"],
            status=AccountStatus(raw["status"]),
            balance=raw["balance"],
            version=raw["version"],
            marks=tuple(Mark.from_json(m) for m in raw.get("marks", ())),
            archive=tuple((int(s), float(t)) for s, t in raw.get("archive", ())),
            next_seq=raw.get("next_seq", 0),
            activity=tuple(raw.get("activity", (0, 0, 0))),
            pending=None
            if pending is None
            else PendingArchive(pending[0], pending[1], Position(*pending[2:])),
        )

    @property
    def opened(self) -> bool:
        return self.status is not AccountStatus.ABSENT

    def activity_at(self, now: float) -> dict[str, int]:
        """Count and volume of the payments applied in the hour that holds `now`."""
        hour, count, volume = self.activity
        if hour != hour_of(now):
            return {"count": 0, "volume": 0}
        return {"count": count, "volume": volume}

    def public(self) -> dict[str, Any]:
        """What `GET /v1/accounts/{id}` shows."""
        return {
            "account_id": self.id,
            "currency": self.currency,
            "status": self.status.value,
            "balance": self.balance,
            "version": self.version,
        }


# ---- rules -----------------------------------------------------------------------------------


def check_amount(amount: int, limits: Limits) -> str | None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return "amount must be a positive integer of minor units"
    if amount > limits.max_amount:
        return f"amount exceeds the maximum of {limits.max_amount}"
    return None


def check_email(email: str) -> str | None:
    return None if _EMAIL.fullmatch(email) else "owner_email is not a valid email address"


def check_currency(code: str) -> str | None:
    return None if is_currency(code) else f"{code!r} is not an ISO 4217 currency"


def exists(account: Account | None) -> bool:
    return account is not None and account.status is not AccountStatus.ABSENT


def _usable(account: Account | None, currency: str) -> str | None:
    if account is None or account.status is AccountStatus.ABSENT:
        return "unknown account"
    if account.status is AccountStatus.CLOSED:
        return "account is closed"
    if account.status is AccountStatus.FROZEN:
        return "account is frozen"
    if account.currency != currency:
        return f"currency mismatch: account holds {account.currency}"
    return None


def _changed(account: Account, **changes: Any) -> Account:
    return replace(account, version=account.version + 1, **changes)


def decide(
    account: Account | None, msg: AccountMessage, limits: Limits
) -> tuple[Account | None, Decision, str | None]:
    """The rules: the new state (or the same), and what was decided, with the reason."""
    rejected = Decision.REJECTED
    match msg:
        case Payment():
            reason = check_amount(msg.amount, limits) or _usable(account, msg.currency)
            if reason:
                return account, rejected, reason
            assert account is not None
            if msg.kind is PaymentKind.DEPOSIT:
                return (
                    _changed(account, balance=account.balance + msg.amount),
                    Decision.APPLIED,
                    None,
                )
            if account.balance < msg.amount:
                return account, rejected, "insufficient funds"
            return _changed(account, balance=account.balance - msg.amount), Decision.APPLIED, None
        case OpenAccount():
            if account is not None and exists(account):
                return account, rejected, "account already exists"
            reason = check_email(msg.owner_email) or check_currency(msg.currency)
            if reason:
                return account, rejected, reason
            opened = Account(msg.account_id, msg.owner_email, msg.currency, AccountStatus.OPEN)
            if account is not None:  # keep the marks an absent account's record gathered
                opened = replace(
                    account,
                    owner_email=msg.owner_email,
                    currency=msg.currency,
                    status=AccountStatus.OPEN,
                    balance=0,
                    version=0,
                )
            return replace(opened, version=1), Decision.APPLIED, None
        case ChangeAccountStatus():
            if account is None or not exists(account):
                return account, rejected, "unknown account"
            if account.status is AccountStatus.CLOSED:
                return account, rejected, "account is closed"
            if msg.status is AccountStatus.CLOSED and account.balance != 0:
                return account, rejected, "only an account with a zero balance can be closed"
            return _changed(account, status=msg.status), Decision.APPLIED, None
        case RequestTransfer():
            reason = check_amount(msg.amount, limits) or _usable(account, msg.currency)
            if not reason and msg.from_account == msg.to_account:
                reason = "source and destination are the same account"
            if reason:
                return account, rejected, reason
            assert account is not None
            if account.balance < msg.amount:
                return account, rejected, "insufficient funds"
            return _changed(account, balance=account.balance - msg.amount), Decision.APPLIED, None
        case CreditLeg():
            reason = _usable(account, msg.currency)
            if reason:
                return account, rejected, reason
            assert account is not None
            return _changed(account, balance=account.balance + msg.amount), Decision.APPLIED, None
        case RefundLeg():
            # Money taken from an account always goes back, whatever its state since. (Only a
            # debited account gets a refund, so one that does not exist means a forged leg.)
            if account is None or not exists(account):
                return account, rejected, "refund for an account that does not exist"
            return _changed(account, balance=account.balance + msg.amount), Decision.APPLIED, None
    raise TypeError(f"not an account message: {msg!r}")


def effects_of(msg: AccountMessage, decision: Decision, reason: str | None) -> list[Effect]:
    """What a decided message emits. The same for a first run and for a replay of it."""
    match msg:
        case Payment():
            return [
                PaymentOutcome(
                    msg.event_id,
                    msg.account_id,
                    msg.kind,
                    msg.amount,
                    msg.currency,
                    decision,
                    reason,
                )
            ]
        case RequestTransfer():
            args = (msg.transfer_id, msg.from_account, msg.to_account, msg.amount, msg.currency)
            if decision is Decision.APPLIED:
                return [
                    CreditLeg(*args),
                    TransferEvent(msg.transfer_id, TransferStatus.DEBITED, *args[1:]),
                ]
            return [
                TransferEvent(msg.transfer_id, TransferStatus.REJECTED, *args[1:], reason=reason)
            ]
        case CreditLeg():
            args = (msg.transfer_id, msg.from_account, msg.to_account, msg.amount, msg.currency)
            if decision is Decision.APPLIED:
                return [TransferEvent(msg.transfer_id, TransferStatus.COMPLETED, *args[1:])]
            return [RefundLeg(*args, reason=reason or "credit failed")]
        case RefundLeg():
            if decision is not Decision.APPLIED:
                return []
            return [
                TransferEvent(
                    msg.transfer_id,
                    TransferStatus.REVERSED,
                    msg.from_account,
                    msg.to_account,
                    msg.amount,
                    msg.currency,
                    reason=msg.reason,
                )
            ]
        case OpenAccount() | ChangeAccountStatus():
            return []
    raise TypeError(f"not an account message: {msg!r}")


# ---- one account, one batch -------------------------------------------------------------------

ArchiveLookup = Callable[[str, int], Mapping[str, list[Any]] | None]
IsCommitted = Callable[[Position], bool]


@dataclass(slots=True)
class Step:
    msg: AccountMessage
    position: Position
    decision: Decision
    reason: str | None
    effects: list[Effect]


@dataclass(slots=True)
class BatchResult:
    account: Account | None
    changed: bool
    steps: list[Step] = field(default_factory=list)
    archive_writes: dict[int, dict[str, list[Any]] | None] = field(default_factory=dict)
    applied: list[Step] = field(default_factory=list)  # newly applied (not duplicates)
    decided: list[Step] = field(default_factory=list)  # newly applied or rejected (not replays)


def _archived(
    account: Account, key: str, lookup: ArchiveLookup, now: float, limits: Limits
) -> Mark | None:
    for seq, created in account.archive:
        if now - created > limits.archive_horizon_s:
            continue
        segment = lookup(account.id, seq)
        if segment is not None and key in segment:
            decision, reason = segment[key]
            return Mark(key, Decision(decision), reason, Position("", -1, -1))
    return None


ACTIVITY_WINDOW_S = 3600


def hour_of(now: float) -> int:
    return int(now // ACTIVITY_WINDOW_S) * ACTIVITY_WINDOW_S


def _counted(activity: tuple[int, int, int], amount: int, now: float) -> tuple[int, int, int]:
    hour, count, volume = activity
    if hour != hour_of(now):
        return (hour_of(now), 1, amount)
    return (hour, count + 1, volume + amount)


def fold(
    account: Account | None,
    messages: Iterable[tuple[AccountMessage, Position]],
    *,
    limits: Limits,
    archive_lookup: ArchiveLookup,
    is_committed: IsCommitted,
    now: float,
) -> BatchResult:
    """Apply a batch of one account's messages, in order; return the state to write once."""
    result = BatchResult(account=account, changed=False)
    last_position: Position | None = None
    for msg, position in messages:
        last_position = position
        current = result.account
        prior = current.find_mark(msg.dedup_key) if current else None
        if prior is None and current is not None:
            prior = _archived(current, msg.dedup_key, archive_lookup, now, limits)
        if prior is not None:
            if isinstance(msg, Payment) and prior.position != position:
                shown, effects = Decision.DUPLICATE, effects_of(msg, Decision.DUPLICATE, None)
            else:  # a replay of the same delivery, or a leg: emit again what was decided
                shown, effects = prior.decision, effects_of(msg, prior.decision, prior.reason)
            result.steps.append(Step(msg, position, shown, prior.reason, effects))
            continue
        new, decision, reason = decide(current, msg, limits)
        step = Step(msg, position, decision, reason, effects_of(msg, decision, reason))
        result.steps.append(step)
        result.decided.append(step)
        if decision is Decision.APPLIED:
            result.applied.append(step)
            if isinstance(msg, Payment) and new is not None:
                new = replace(new, activity=_counted(new.activity, msg.amount, now))
        if new is None:  # no record yet: one that only remembers this decision
            new = Account(msg.account_id, "", "", AccountStatus.ABSENT)
        mark = Mark(msg.dedup_key, decision, reason, position)
        result.account = replace(new, marks=(*new.marks, mark))
        result.changed = True
    if result.account is not None and last_position is not None:
        _archive(result, last_position, limits, is_committed, now)
    return result


def _archive(
    result: BatchResult, position: Position, limits: Limits, is_committed: IsCommitted, now: float
) -> None:
    """The two-phase move of old marks to the archive; see the module docstring."""
    account = result.account
    assert account is not None
    expired = [seq for seq, created in account.archive if now - created > limits.archive_horizon_s]
    if expired:
        account = replace(account, archive=tuple(a for a in account.archive if a[0] not in expired))
        result.archive_writes.update({seq: None for seq in expired})
        result.changed = True
    pending = account.pending
    if pending is not None:
        if is_committed(pending.position):
            account = replace(account, marks=account.marks[pending.count :], pending=None)
        else:
            segment = _segment(account.marks[: pending.count])
            result.archive_writes[pending.seq] = segment
            account = replace(account, pending=replace(pending, position=position))
        result.changed = True
    elif len(account.marks) >= 2 * limits.window:
        movable = 0
        for mark in account.marks[: len(account.marks) - limits.window]:
            if not is_committed(mark.position):
                break
            movable += 1
        if movable:
            seq = account.next_seq
            result.archive_writes[seq] = _segment(account.marks[:movable])
            account = replace(
                account,
                archive=(*account.archive, (seq, now)),
                next_seq=seq + 1,
                pending=PendingArchive(seq, movable, position),
            )
            result.changed = True
    result.account = account


def _segment(marks: Iterable[Mark]) -> dict[str, list[Any]]:
    return {m.key: [m.decision.value, m.reason] for m in marks}


def archive_key(account_id: str, seq: int) -> str:
    return f"{account_id}/{seq}"
