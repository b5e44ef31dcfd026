"""The ledger's rules (`tables.ledger.decide`) and what each decision emits (`effects_of`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tables.ledger import Account, Limits, decide, effects_of
from tables.messages import (
    AccountStatus,
    ChangeAccountStatus,
    CreditLeg,
    Decision,
    OpenAccount,
    Payment,
    PaymentKind,
    PaymentOutcome,
    RefundLeg,
    RequestTransfer,
    TransferEvent,
    TransferStatus,
)

LIMITS = Limits()
APPLIED, REJECTED = Decision.APPLIED, Decision.REJECTED
DEPOSIT, WITHDRAWAL = PaymentKind.DEPOSIT, PaymentKind.WITHDRAWAL


def account(
    balance: int = 0,
    status: AccountStatus = AccountStatus.OPEN,
    currency: str = "EUR",
    account_id: str = "acc-1",
) -> Account:
    return Account(account_id, "owner@example.com", currency, status, balance=balance, version=3)


def payment(
    kind: PaymentKind, amount: Any, currency: str = "EUR", event_id: str = "evt-1"
) -> Payment:
    return Payment(event_id, kind, "acc-1", amount, currency, "2026-11-26T10:00:00+00:00")


def transfer(
    amount: Any = 300, currency: str = "EUR", to_account: str = "acc-2"
) -> RequestTransfer:
    return RequestTransfer("tr-1", "acc-1", to_account, amount, currency)


def credit(amount: int = 300, currency: str = "EUR") -> CreditLeg:
    return CreditLeg("tr-1", "acc-1", "acc-2", amount, currency)


def refund(amount: int = 300, reason: str = "account is closed") -> RefundLeg:
    return RefundLeg("tr-1", "acc-1", "acc-2", amount, "EUR", reason)


# ---- payments --------------------------------------------------------------------------------


def test_a_deposit_adds_to_the_balance_and_bumps_the_version() -> None:
    new, decision, reason = decide(account(balance=100), payment(DEPOSIT, 250), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new is not None
    assert new.balance == 350
    assert new.version == 4


def test_a_withdrawal_subtracts_from_the_balance() -> None:
    new, decision, reason = decide(account(balance=1000), payment(WITHDRAWAL, 400), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new is not None
    assert new.balance == 600
    assert new.version == 4


def test_a_withdrawal_may_empty_the_account_exactly() -> None:
    new, decision, _ = decide(account(balance=400), payment(WITHDRAWAL, 400), LIMITS)
    assert decision is APPLIED
    assert new is not None and new.balance == 0


@pytest.mark.parametrize("balance", [0, 1, 399])
def test_a_withdrawal_never_overdraws(balance: int) -> None:
    before = account(balance=balance)
    new, decision, reason = decide(before, payment(WITHDRAWAL, 400), LIMITS)
    assert (decision, reason) == (REJECTED, "insufficient funds")
    assert new is before  # no new state, no version bump


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
@pytest.mark.parametrize("amount", [0, -1, -500, 1.5, 10.0, True, "100", None])
def test_amounts_must_be_positive_integers(kind: PaymentKind, amount: Any) -> None:
    before = account(balance=1000)
    new, decision, reason = decide(before, payment(kind, amount), LIMITS)
    assert decision is REJECTED
    assert reason == "amount must be a positive integer of minor units"
    assert new is before


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
def test_amounts_above_the_limit_are_rejected_and_the_limit_itself_is_accepted(
    kind: PaymentKind,
) -> None:
    limits = Limits(max_amount=5000)
    rich = account(balance=10_000)
    _, decision, reason = decide(rich, payment(kind, 5001), limits)
    assert (decision, reason) == (REJECTED, "amount exceeds the maximum of 5000")
    new, decision, _ = decide(rich, payment(kind, 5000), limits)
    assert decision is APPLIED
    assert new is not None and new.balance == (15_000 if kind is DEPOSIT else 5000)


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
def test_a_payment_in_another_currency_is_rejected(kind: PaymentKind) -> None:
    before = account(balance=1000, currency="EUR")
    new, decision, reason = decide(before, payment(kind, 10, currency="USD"), LIMITS)
    assert (decision, reason) == (REJECTED, "currency mismatch: account holds EUR")
    assert new is before


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
def test_a_payment_to_an_unknown_account_is_rejected(kind: PaymentKind) -> None:
    new, decision, reason = decide(None, payment(kind, 10), LIMITS)
    assert (new, decision, reason) == (None, REJECTED, "unknown account")


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
@pytest.mark.parametrize(
    ("status", "expected"),
    [(AccountStatus.FROZEN, "account is frozen"), (AccountStatus.CLOSED, "account is closed")],
)
def test_payments_to_frozen_or_closed_accounts_are_rejected(
    kind: PaymentKind, status: AccountStatus, expected: str
) -> None:
    before = account(balance=1000, status=status)
    new, decision, reason = decide(before, payment(kind, 10), LIMITS)
    assert (decision, reason) == (REJECTED, expected)
    assert new is before


def test_an_invalid_amount_is_reported_before_the_account_state() -> None:
    _, decision, reason = decide(None, payment(DEPOSIT, -1), LIMITS)
    assert decision is REJECTED
    assert reason == "amount must be a positive integer of minor units"


# ---- opening accounts ------------------------------------------------------------------------


def open_cmd(email: str = "ann@example.com", currency: str = "EUR") -> OpenAccount:
    return OpenAccount("cmd-1", "acc-9", email, currency)


def test_open_account_creates_an_open_empty_account_at_version_one() -> None:
    new, decision, reason = decide(None, open_cmd(), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new == Account("acc-9", "ann@example.com", "EUR", AccountStatus.OPEN, 0, 1)


def test_an_account_cannot_be_opened_twice() -> None:
    existing = account()
    new, decision, reason = decide(existing, open_cmd(), LIMITS)
    assert (decision, reason) == (REJECTED, "account already exists")
    assert new is existing


@pytest.mark.parametrize(
    "email", ["ann@example.com", "first.last+tag@mail.example.co.uk", "x@y.io"]
)
def test_valid_emails_are_accepted(email: str) -> None:
    _, decision, _ = decide(None, open_cmd(email=email), LIMITS)
    assert decision is APPLIED


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign",
        "ann@example",
        "ann@@example.com",
        "a nn@example.com",
        "@example.com",
        "ann@example.c",
        "ann@exa mple.com",
    ],
)
def test_open_account_validates_the_email(email: str) -> None:
    new, decision, reason = decide(None, open_cmd(email=email), LIMITS)
    assert (new, decision) == (None, REJECTED)
    assert reason == "owner_email is not a valid email address"


def test_an_email_with_a_trailing_newline_is_rejected() -> None:
    """Whitespace is excluded everywhere in the address, a final line break included."""
    new, decision, reason = decide(None, open_cmd(email="ann@example.com\n"), LIMITS)
    assert (new, decision) == (None, REJECTED)
    assert reason == "owner_email is not a valid email address"


@pytest.mark.parametrize("currency", ["USD", "JPY", "CHF", "XOF"])
def test_open_account_accepts_iso_4217_currencies(currency: str) -> None:
    new, decision, _ = decide(None, open_cmd(currency=currency), LIMITS)
    assert decision is APPLIED
    assert new is not None and new.currency == currency


@pytest.mark.parametrize("currency", ["eur", "EURO", "XXX", "XAU", "ABC", ""])
def test_open_account_rejects_other_currency_codes(currency: str) -> None:
    new, decision, reason = decide(None, open_cmd(currency=currency), LIMITS)
    assert (new, decision) == (None, REJECTED)
    assert reason == f"{currency!r} is not an ISO 4217 currency"


# ---- account status --------------------------------------------------------------------------


def change(status: AccountStatus) -> ChangeAccountStatus:
    return ChangeAccountStatus("cmd-2", "acc-1", status)


def test_an_open_account_can_be_frozen_and_unfrozen() -> None:
    frozen, decision, _ = decide(account(balance=50), change(AccountStatus.FROZEN), LIMITS)
    assert decision is APPLIED
    assert frozen is not None and frozen.status is AccountStatus.FROZEN
    assert frozen.balance == 50 and frozen.version == 4
    # frozen: no payments in or out
    assert decide(frozen, payment(DEPOSIT, 1), LIMITS)[1] is REJECTED
    opened, decision, _ = decide(frozen, change(AccountStatus.OPEN), LIMITS)
    assert decision is APPLIED
    assert opened is not None and opened.status is AccountStatus.OPEN and opened.version == 5
    assert decide(opened, payment(DEPOSIT, 1), LIMITS)[1] is APPLIED


@pytest.mark.parametrize("status", [AccountStatus.OPEN, AccountStatus.FROZEN])
def test_an_account_with_a_zero_balance_can_be_closed(status: AccountStatus) -> None:
    closed, decision, reason = decide(account(status=status), change(AccountStatus.CLOSED), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert closed is not None and closed.status is AccountStatus.CLOSED


def test_an_account_holding_money_cannot_be_closed() -> None:
    before = account(balance=1)
    new, decision, reason = decide(before, change(AccountStatus.CLOSED), LIMITS)
    assert decision is REJECTED
    assert reason == "only an account with a zero balance can be closed"
    assert new is before


@pytest.mark.parametrize("target", list(AccountStatus))
def test_closed_is_terminal(target: AccountStatus) -> None:
    closed = account(status=AccountStatus.CLOSED)
    new, decision, reason = decide(closed, change(target), LIMITS)
    assert (decision, reason) == (REJECTED, "account is closed")
    assert new is closed


def test_changing_the_status_of_an_unknown_account_is_rejected() -> None:
    assert decide(None, change(AccountStatus.FROZEN), LIMITS) == (None, REJECTED, "unknown account")


# ---- transfers: leg 1, the debit -------------------------------------------------------------


def test_a_transfer_request_debits_the_source() -> None:
    new, decision, reason = decide(account(balance=1000), transfer(300), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new is not None and new.balance == 700 and new.version == 4


@pytest.mark.parametrize(
    ("before", "msg", "expected"),
    [
        (account(balance=299), transfer(300), "insufficient funds"),
        (
            account(balance=1000),
            transfer(300, to_account="acc-1"),
            "source and destination are the same account",
        ),
        (
            account(balance=1000),
            transfer(300, currency="USD"),
            "currency mismatch: account holds EUR",
        ),
        (account(balance=1000, status=AccountStatus.FROZEN), transfer(300), "account is frozen"),
        (account(balance=1000, status=AccountStatus.CLOSED), transfer(300), "account is closed"),
        (account(balance=1000), transfer(0), "amount must be a positive integer of minor units"),
        (account(balance=1000), transfer(2.5), "amount must be a positive integer of minor units"),
        (
            account(balance=10**12),
            transfer(LIMITS.max_amount + 1),
            f"amount exceeds the maximum of {LIMITS.max_amount}",
        ),
    ],
)
def test_a_transfer_request_is_rejected_without_debiting(
    before: Account, msg: RequestTransfer, expected: str
) -> None:
    new, decision, reason = decide(before, msg, LIMITS)
    assert (decision, reason) == (REJECTED, expected)
    assert new is before


def test_a_transfer_from_an_unknown_account_is_rejected() -> None:
    assert decide(None, transfer(), LIMITS) == (None, REJECTED, "unknown account")


# ---- transfers: leg 2, the credit; leg 3, the refund ----------------------------------------


def test_a_credit_leg_credits_the_destination() -> None:
    new, decision, reason = decide(account(balance=5, account_id="acc-2"), credit(300), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new is not None and new.balance == 305 and new.version == 4


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (None, "unknown account"),
        (account(account_id="acc-2", status=AccountStatus.CLOSED), "account is closed"),
        (account(account_id="acc-2", status=AccountStatus.FROZEN), "account is frozen"),
        (account(account_id="acc-2", currency="GBP"), "currency mismatch: account holds GBP"),
    ],
)
def test_a_credit_leg_that_cannot_be_credited_is_rejected_and_emits_a_refund(
    before: Account | None, expected: str
) -> None:
    leg = credit(300)
    new, decision, reason = decide(before, leg, LIMITS)
    assert (decision, reason) == (REJECTED, expected)
    assert new is before
    assert effects_of(leg, decision, reason) == [
        RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", expected)
    ]


@pytest.mark.parametrize("status", [s for s in AccountStatus if s is not AccountStatus.ABSENT])
def test_a_refund_always_credits_the_source_back(status: AccountStatus) -> None:
    new, decision, reason = decide(account(balance=700, status=status), refund(300), LIMITS)
    assert (decision, reason) == (APPLIED, None)
    assert new is not None
    assert new.balance == 1000
    assert new.status is status


@pytest.mark.parametrize("before", [None, account(status=AccountStatus.ABSENT)])
def test_a_refund_for_an_account_that_never_existed_is_rejected(before: Account | None) -> None:
    # Only a debited account gets a refund: this is a forged leg. It must not crash the worker
    # (a poison message would stop it for good), and it must not mint money or a reversal.
    new, decision, reason = decide(before, refund(), LIMITS)
    assert (decision, reason) == (REJECTED, "refund for an account that does not exist")
    assert new is before
    assert effects_of(refund(), decision, reason) == []


def test_a_full_transfer_that_bounces_conserves_money() -> None:
    source = account(balance=1000)
    destination = account(account_id="acc-2", status=AccountStatus.CLOSED)
    debited, d1, r1 = decide(source, transfer(300), LIMITS)
    (leg, _) = effects_of(transfer(300), d1, r1)
    assert isinstance(leg, CreditLeg)
    _, d2, r2 = decide(destination, leg, LIMITS)
    (back,) = effects_of(leg, d2, r2)
    assert isinstance(back, RefundLeg)
    refunded, d3, r3 = decide(debited, back, LIMITS)
    assert d3 is APPLIED
    assert refunded is not None and refunded.balance == 1000
    (event,) = effects_of(back, d3, r3)
    assert isinstance(event, TransferEvent)
    assert (event.status, event.reason) == (TransferStatus.REVERSED, "account is closed")


# ---- effects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "reason"),
    [(APPLIED, None), (REJECTED, "insufficient funds"), (Decision.DUPLICATE, None)],
)
def test_a_payment_emits_exactly_one_outcome(decision: Decision, reason: str | None) -> None:
    msg = payment(WITHDRAWAL, 40)
    assert effects_of(msg, decision, reason) == [
        PaymentOutcome("evt-1", "acc-1", WITHDRAWAL, 40, "EUR", decision, reason)
    ]


def test_an_applied_transfer_request_emits_the_credit_leg_and_a_debited_event() -> None:
    assert effects_of(transfer(300), APPLIED, None) == [
        CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR"),
        TransferEvent("tr-1", TransferStatus.DEBITED, "acc-1", "acc-2", 300, "EUR"),
    ]


def test_a_rejected_transfer_request_emits_only_a_rejected_event_with_the_reason() -> None:
    assert effects_of(transfer(300), REJECTED, "insufficient funds") == [
        TransferEvent(
            "tr-1", TransferStatus.REJECTED, "acc-1", "acc-2", 300, "EUR", "insufficient funds"
        )
    ]


def test_an_applied_credit_leg_completes_the_transfer() -> None:
    assert effects_of(credit(300), APPLIED, None) == [
        TransferEvent("tr-1", TransferStatus.COMPLETED, "acc-1", "acc-2", 300, "EUR")
    ]


def test_a_rejected_credit_leg_without_a_reason_still_refunds() -> None:
    (leg,) = effects_of(credit(300), REJECTED, None)
    assert leg == RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", "credit failed")
    assert leg.account_id == "acc-1"  # the refund goes back to the source's partition


def test_a_refund_reverses_the_transfer_with_the_leg_reason() -> None:
    assert effects_of(refund(300, reason="account is frozen"), APPLIED, None) == [
        TransferEvent(
            "tr-1", TransferStatus.REVERSED, "acc-1", "acc-2", 300, "EUR", "account is frozen"
        )
    ]


@pytest.mark.parametrize("decision", [APPLIED, REJECTED])
def test_account_commands_emit_nothing(decision: Decision) -> None:
    assert effects_of(open_cmd(), decision, None) == []
    assert effects_of(change(AccountStatus.FROZEN), decision, None) == []


def test_legs_are_keyed_by_the_account_they_change() -> None:
    assert transfer().account_id == "acc-1"
    assert credit().account_id == "acc-2"
    assert refund().account_id == "acc-1"
    # each leg of one transfer has its own dedup key
    keys = {transfer().dedup_key, credit().dedup_key, refund().dedup_key}
    assert len(keys) == 3


def test_anything_else_is_not_an_account_message() -> None:
    event = TransferEvent("tr-1", TransferStatus.DEBITED, "acc-1", "acc-2", 1, "EUR")
    with pytest.raises(TypeError):
        decide(account(), event, LIMITS)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        effects_of(event, APPLIED, None)  # type: ignore[arg-type]


def test_decide_does_not_mutate_its_input() -> None:
    before = account(balance=100)
    snapshot = replace(before)
    decide(before, payment(DEPOSIT, 50), LIMITS)
    decide(before, transfer(30), LIMITS)
    assert before == snapshot
