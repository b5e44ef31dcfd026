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
from typing import Any, Protocol

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
            json = [self.key, self.decision, self.reason, p.topic, p.partition, p.offset]
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


def exists(account: AccountView | None) -> bool:
    return account is not None and account.status is not AccountStatus.ABSENT


def _usable(account: AccountView | None, currency: str) -> str | None:
    if account is None or account.status is AccountStatus.ABSENT:
        return "unknown account"
    if account.status is AccountStatus.CLOSED:
        return "account is closed"
    if account.status is AccountStatus.FROZEN:
        return "account is frozen"
    if account.currency != currency:
        return f"currency mismatch: account holds {account.currency}"
    return None


class AccountView(Protocol):
    """What the rules read of an account: an `Account`, or a fold's working `Draft` of one."""

    @property
    def status(self) -> AccountStatus: ...
    @property
    def currency(self) -> str: ...
    @property
    def balance(self) -> int: ...


Change = tuple[Decision, str | None, int, AccountStatus | None]


def judge(account: AccountView | None, msg: AccountMessage, limits: Limits) -> Change:
    """The rules: what is decided for `msg`, with the reason, and the change it makes.

    The change is a balance delta and the new status (None: unchanged); an applied
    `OpenAccount` opens the account with its owner and currency, at balance 0.
    """
    rejected = Decision.REJECTED
    match msg:
        case Payment():
            reason = check_amount(msg.amount, limits) or _usable(account, msg.currency)
            if reason:
                return rejected, reason, 0, None
            assert account is not None
            if msg.kind is PaymentKind.DEPOSIT:
                return Decision.APPLIED, None, msg.amount, None
            if account.balance < msg.amount:
                return rejected, "insufficient funds", 0, None
            return Decision.APPLIED, None, -msg.amount, None
        case OpenAccount():
            if exists(account):
                return rejected, "account already exists", 0, None
            reason = check_email(msg.owner_email) or check_currency(msg.currency)
            if reason:
                return rejected, reason, 0, None
            return Decision.APPLIED, None, 0, AccountStatus.OPEN
        case ChangeAccountStatus():
            if not exists(account):
                return rejected, "unknown account", 0, None
            assert account is not None
            if account.status is AccountStatus.CLOSED:
                return rejected, "account is closed", 0, None
            if msg.status is AccountStatus.CLOSED and account.balance != 0:
                return rejected, "only an account with a zero balance can be closed", 0, None
            return Decision.APPLIED, None, 0, msg.status
        case RequestTransfer():
            reason = check_amount(msg.amount, limits) or _usable(account, msg.currency)
            if not reason and msg.from_account == msg.to_account:
                reason = "source and destination are the same account"
            if reason:
                return rejected, reason, 0, None
            assert account is not None
            if account.balance < msg.amount:
                return rejected, "insufficient funds", 0, None
            return Decision.APPLIED, None, -msg.amount, None
        case CreditLeg():
            reason = _usable(account, msg.currency)
            if reason:
                return rejected, reason, 0, None
            return Decision.APPLIED, None, msg.amount, None
        case RefundLeg():
            # Money taken from an account always goes back, whatever its state since. (Only a
            # debited account gets a refund, so one that does not exist means a forged leg.)
            if not exists(account):
                return rejected, "refund for an account that does not exist", 0, None
            return Decision.APPLIED, None, msg.amount, None
    raise TypeError(f"not an account message: {msg!r}")


def decide(
    account: Account | None, msg: AccountMessage, limits: Limits
) -> tuple[Account | None, Decision, str | None]:
    """The rules applied to a record: the new state (or the same), the decision, the reason."""
    decision, reason, delta, status = judge(account, msg, limits)
    if decision is not Decision.APPLIED:
        return account, decision, reason
    if isinstance(msg, OpenAccount):
        # keep the marks an absent account's record gathered
        base = account or Account(msg.account_id, "", "", AccountStatus.ABSENT)
        opened = replace(
            base,
            owner_email=msg.owner_email,
            currency=msg.currency,
            status=AccountStatus.OPEN,
            balance=0,
            version=1,
        )
        return opened, decision, None
    assert account is not None
    new = replace(
        account,
        version=account.version + 1,
        balance=account.balance + delta,
        status=status or account.status,
    )
    return new, decision, None


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

IsCommitted = Callable[[Position], bool]
SegmentLoader = Callable[[str, int], Mapping[str, list[Any]] | None]
_NOWHERE = Position("", -1, -1)  # an archived mark does not keep where its message was read


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


@dataclass(slots=True)
class Draft:
    """An account's working copy inside one fold: changed in place, frozen once at the end."""

    id: str
    owner_email: str
    currency: str
    status: AccountStatus
    balance: int
    version: int
    marks: list[Mark]
    index: dict[str, Mark]  # dedup key -> mark, of `marks`
    archive: list[tuple[int, float]]
    next_seq: int
    pending: PendingArchive | None
    activity: tuple[int, int, int]

    @classmethod
    def of(cls, a: Account) -> Draft:
        marks = list(a.marks)
        return cls(
            a.id,
            a.owner_email,
            a.currency,
            a.status,
            a.balance,
            a.version,
            marks,
            {m.key: m for m in marks},
            list(a.archive),
            a.next_seq,
            a.pending,
            a.activity,
        )

    @classmethod
    def absent(cls, account_id: str) -> Draft:
        """A record for an id no account was opened under: it only keeps dedup marks."""
        return cls(account_id, "", "", AccountStatus.ABSENT, 0, 0, [], {}, [], 0, None, (0, 0, 0))

    def apply(self, msg: AccountMessage, delta: int, status: AccountStatus | None) -> None:
        if isinstance(msg, OpenAccount):  # the marks an absent record gathered stay
            self.owner_email, self.currency = msg.owner_email, msg.currency
            self.status, self.balance, self.version = AccountStatus.OPEN, 0, 1
            return
        self.balance += delta
        self.version += 1
        if status is not None:
            self.status = status

    def add(self, mark: Mark) -> None:
        self.marks.append(mark)
        self.index[mark.key] = mark

    def drop_oldest(self, count: int) -> None:
        for mark in self.marks[:count]:
            if self.index.get(mark.key) is mark:
                del self.index[mark.key]
        del self.marks[:count]

    def freeze(self) -> Account:
        return Account(
            self.id,
            self.owner_email,
            self.currency,
            self.status,
            self.balance,
            self.version,
            tuple(self.marks),
            tuple(self.archive),
            self.next_seq,
            self.pending,
            self.activity,
        )


class ArchiveIndex:
    """Which archive segment holds each archived dedup id: one dict look-up per event.

    Built once per account from its live segments (`load(account id, seq)`), the first time
    one of its events is looked up, and kept in step with the segments each fold writes or
    expires (`record`). It is a cache of the archive table: `forget` drops it whenever the
    table may have changed under it (a rebalance: recovery rewrites the store), and it is
    rebuilt from the table. At most `size` accounts are indexed (the least recent go first).
    """

    def __init__(self, load: SegmentLoader, size: int = 100_000) -> None:
        self._load, self._size = load, size
        # account id -> dedup key -> (segment seq, segment created at, decision, reason)
        self._ids: dict[str, dict[str, tuple[int, float, str, str | None]]] = {}

    def find(self, account: Draft, key: str, now: float, horizon_s: float) -> Mark | None:
        ids = self._ids.get(account.id)
        if ids is None:
            ids = self._build(account)
        entry = ids.get(key)
        if entry is None:
            return None
        _, created, decision, reason = entry
        if now - created > horizon_s:
            return None
        return Mark(key, Decision(decision), reason, _NOWHERE)

    def record(self, result: BatchResult) -> None:
        """Follow a fold's archive writes (a new or rewritten segment, or an expired one)."""
        account = result.account
        if not result.archive_writes or account is None:
            return
        ids = self._ids.get(account.id)
        if ids is None:
            return  # built from the table when first needed
        created_at = dict(account.archive)
        for seq, segment in result.archive_writes.items():
            if segment is None:
                for key in [k for k, e in ids.items() if e[0] == seq]:
                    del ids[key]
                continue
            created = created_at.get(seq, 0.0)
            for key, (decision, reason) in segment.items():
                ids[key] = (seq, created, decision, reason)

    def forget(self) -> None:
        self._ids.clear()

    def _build(self, account: Draft) -> dict[str, tuple[int, float, str, str | None]]:
        ids: dict[str, tuple[int, float, str, str | None]] = {}
        for seq, created in account.archive:
            segment = self._load(account.id, seq)
            for key, (decision, reason) in (segment or {}).items():
                ids[key] = (seq, created, decision, reason)
        self._ids.pop(account.id, None)
        self._ids[account.id] = ids
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]
        return ids


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
    archive: ArchiveIndex,
    is_committed: IsCommitted,
    now: float,
) -> BatchResult:
    """Apply a batch of one account's messages, in order; return the state to write once.

    The messages change a working copy (`Draft`); the record is frozen once, at the end.
    """
    result = BatchResult(account=account, changed=False)
    draft = Draft.of(account) if account is not None else None
    horizon = limits.archive_horizon_s
    last_position: Position | None = None
    for msg, position in messages:
        last_position = position
        key = msg.dedup_key
        prior = None
        if draft is not None:
            prior = draft.index.get(key)
            if prior is None and draft.archive:
                prior = archive.find(draft, key, now, horizon)
        if prior is not None:
            if isinstance(msg, Payment) and prior.position != position:
                shown, effects = Decision.DUPLICATE, effects_of(msg, Decision.DUPLICATE, None)
            else:  # a replay of the same delivery, or a leg: emit again what was decided
                shown, effects = prior.decision, effects_of(msg, prior.decision, prior.reason)
            result.steps.append(Step(msg, position, shown, prior.reason, effects))
            continue
        decision, reason, delta, status = judge(draft, msg, limits)
        step = Step(msg, position, decision, reason, effects_of(msg, decision, reason))
        result.steps.append(step)
        result.decided.append(step)
        if draft is None:  # no record yet: one that only remembers this decision
            draft = Draft.absent(msg.account_id)
        if decision is Decision.APPLIED:
            result.applied.append(step)
            draft.apply(msg, delta, status)
            if isinstance(msg, Payment):
                draft.activity = _counted(draft.activity, msg.amount, now)
        draft.add(Mark(key, decision, reason, position))
        result.changed = True
    if draft is not None and last_position is not None:
        _archive(draft, result, last_position, limits, is_committed, now)
        result.account = draft.freeze()
        archive.record(result)
    return result


def _archive(
    draft: Draft,
    result: BatchResult,
    position: Position,
    limits: Limits,
    is_committed: IsCommitted,
    now: float,
) -> None:
    """The two-phase move of old marks to the archive; see the module docstring."""
    # Segments are created in order, so the expired ones are at the front.
    horizon = limits.archive_horizon_s
    while draft.archive and now - draft.archive[0][1] > horizon:
        seq, _ = draft.archive.pop(0)
        result.archive_writes[seq] = None
        result.changed = True
    pending = draft.pending
    if pending is not None:
        if is_committed(pending.position):
            draft.drop_oldest(pending.count)
            draft.pending = None
        else:
            result.archive_writes[pending.seq] = _segment(draft.marks[: pending.count])
            draft.pending = replace(pending, position=position)
        result.changed = True
    elif len(draft.marks) >= 2 * limits.window:
        movable = 0
        for mark in draft.marks[: len(draft.marks) - limits.window]:
            if not is_committed(mark.position):
                break
            movable += 1
        if movable:
            seq = draft.next_seq
            result.archive_writes[seq] = _segment(draft.marks[:movable])
            draft.archive.append((seq, now))
            draft.next_seq = seq + 1
            draft.pending = PendingArchive(seq, movable, position)
            result.changed = True


def _segment(marks: Iterable[Mark]) -> dict[str, list[Any]]:
    return {m.key: [m.decision, m.reason] for m in marks}  # StrEnum: JSON writes the value


def archive_key(account_id: str, seq: int) -> str:
    return f"{account_id}/{seq}"
