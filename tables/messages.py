"""What reaches an account (payments, commands, transfer legs) and what leaving it produces.

Plain frozen dataclasses: the domain speaks only these; `tables.codec` turns bytes into them.
Commands are imperative (`RequestTransfer`), events past tense (`TransferDebited` is a
`TransferEvent` with status `debited`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PaymentKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"


class AccountStatus(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"
    # No account was opened under this id: the record only keeps the dedup marks of messages
    # rejected for it, so a replay decides as the first run did even if the account opens later.
    ABSENT = "absent"


class Decision(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class TransferStatus(StrEnum):
    PENDING = "pending"
    DEBITED = "debited"
    COMPLETED = "completed"
    REJECTED = "rejected"
    REVERSED = "reversed"

    @property
    def final(self) -> bool:
        return self in (TransferStatus.COMPLETED, TransferStatus.REJECTED, TransferStatus.REVERSED)

    @property
    def rank(self) -> int:
        return 2 if self.final else 1 if self is TransferStatus.DEBITED else 0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message was read: the dedup markers remember it to tell a replay from a resend."""

    topic: str
    partition: int
    offset: int


# ---- inputs, keyed by the account they change ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Payment:
    event_id: str
    kind: PaymentKind
    account_id: str
    amount: int
    currency: str
    occurred_at: str

    @property
    def dedup_key(self) -> str:
        return self.event_id


@dataclass(frozen=True, slots=True)
class OpenAccount:
    command_id: str
    account_id: str
    owner_email: str
    currency: str

    @property
    def dedup_key(self) -> str:
        return self.command_id


@dataclass(frozen=True, slots=True)
class ChangeAccountStatus:
    """Freeze, unfreeze (back to open) or close an account."""

    command_id: str
    account_id: str
    status: AccountStatus

    @property
    def dedup_key(self) -> str:
        return self.command_id


@dataclass(frozen=True, slots=True)
class _TransferStep:
    """What every step of a transfer carries; `leg` names the step in its dedup key."""

    transfer_id: str
    from_account: str
    to_account: str
    amount: int
    currency: str

    leg = ""
    on_source = True  # whether the step changes the source account (else the destination)

    @property
    def account_id(self) -> str:
        return self.from_account if self.on_source else self.to_account

    @property
    def dedup_key(self) -> str:
        return f"{self.transfer_id}:{self.leg}"


@dataclass(frozen=True, slots=True)
class RequestTransfer(_TransferStep):
    """Leg 1, on the source account: debit it or reject the transfer."""

    leg = "debit"


@dataclass(frozen=True, slots=True)
class CreditLeg(_TransferStep):
    """Leg 2, on the destination account: credit it, or send the money back."""

    leg = "credit"
    on_source = False


@dataclass(frozen=True, slots=True)
class RefundLeg(_TransferStep):
    """Leg 3, back on the source account: credit the debited amount back."""

    reason: str = ""
    leg = "refund"


AccountMessage = (
    Payment | OpenAccount | ChangeAccountStatus | RequestTransfer | CreditLeg | RefundLeg
)


# ---- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """One per payment event delivery, on `atlas.outcomes.v1` keyed by event id."""

    event_id: str
    account_id: str
    kind: PaymentKind
    amount: int
    currency: str
    status: Decision
    reason: str | None


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """A transfer's progress, keyed by transfer id."""

    transfer_id: str
    status: TransferStatus
    from_account: str
    to_account: str
    amount: int
    currency: str
    reason: str | None = None


Effect = PaymentOutcome | TransferEvent | CreditLeg | RefundLeg
