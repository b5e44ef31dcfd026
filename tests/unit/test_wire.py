"""Bytes to domain messages and back (`streams.wire`): the payment contract and the commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.wire import (
    BadMessage,
    decode_command,
    decode_payment,
    decode_transfer_event,
    encode_command,
    encode_outcome,
    encode_transfer_event,
)
from tables.messages import (
    AccountMessage,
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


def contract(**overrides: Any) -> dict[str, Any]:
    """The example of DESIGN.md's payment event contract."""
    body: dict[str, Any] = {
        "event_id": "c0a8-0001",
        "type": "deposit",
        "account_id": "acc-1",
        "amount": 1250,
        "currency": "EUR",
        "occurred_at": "2026-11-26T10:00:00Z",
    }
    body.update(overrides)
    return body


def without(field: str) -> dict[str, Any]:
    body = contract()
    del body[field]
    return body


def bad(key: bytes | None, value: bytes | None) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        decode_payment(key, value)
    return info.value


# ---- the payment contract --------------------------------------------------------------------


def test_a_valid_deposit_decodes() -> None:
    p = decode_payment(b"acc-1", orjson.dumps(contract()))
    assert p == Payment("c0a8-0001", PaymentKind.DEPOSIT, "acc-1", 1250, "EUR", p.occurred_at)
    assert datetime.fromisoformat(p.occurred_at) == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert type(p.amount) is int


def test_a_valid_withdrawal_decodes() -> None:
    p = decode_payment(b"acc-1", orjson.dumps(contract(type="withdrawal", amount=1)))
    assert (p.kind, p.amount) == (PaymentKind.WITHDRAWAL, 1)


def test_unknown_extra_fields_are_ignored() -> None:
    body = contract(note="from a newer producer", metadata={"a": [1, 2]})
    assert decode_payment(b"acc-1", orjson.dumps(body)) == decode_payment(
        b"acc-1", orjson.dumps(contract())
    )


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe{}", b'{"event_id": "\xc3\x28"}', b"not json", b"{", b"", None],
    ids=["bad-utf8-start", "bad-utf8-inside", "text", "truncated", "empty", "none"],
)
def test_undecodable_bytes_are_a_decode_error(value: bytes | None) -> None:
    error = bad(b"acc-1", value)
    assert error.error_type == "decode_error"
    assert error.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([contract()], id="array"),
        pytest.param("a string", id="string"),
        pytest.param(None, id="null"),
        pytest.param(contract(amount=-5), id="negative-amount"),
        pytest.param(contract(amount=0), id="zero-amount"),
        pytest.param(contract(amount=12.5), id="float-amount"),
        pytest.param(contract(amount=1250.0), id="integral-float-amount"),
        pytest.param(contract(amount=True), id="bool-amount"),
        pytest.param(contract(amount="1250"), id="string-amount"),
        pytest.param(contract(event_id=42), id="int-event-id"),
        pytest.param(contract(event_id=""), id="empty-event-id"),
        pytest.param(contract(event_id="x" * 129), id="long-event-id"),
        pytest.param(contract(account_id=["acc-1"]), id="list-account-id"),
        pytest.param(contract(type="refund"), id="unknown-type"),
        pytest.param(contract(type="Deposit"), id="capitalised-type"),
        pytest.param(contract(currency="eur"), id="lowercase-currency"),
        pytest.param(contract(currency="EURO"), id="long-currency"),
        pytest.param(contract(currency="E1R"), id="digit-currency"),
        pytest.param(contract(currency="EUR\n"), id="newline-currency"),
        pytest.param(contract(currency=978), id="numeric-currency"),
        pytest.param(contract(occurred_at="yesterday"), id="bad-timestamp"),
        *(pytest.param(without(f), id=f"missing-{f}") for f in contract()),
    ],
)
def test_schema_violations_are_a_schema_error(body: Any) -> None:
    error = bad(b"acc-1", orjson.dumps(body))
    assert error.error_type == "schema_error"


def test_a_schema_error_names_the_field() -> None:
    assert bad(b"acc-1", orjson.dumps(contract(amount=-5))).message.startswith("amount:")
    assert bad(b"acc-1", orjson.dumps(without("currency"))).message.startswith("currency:")


def test_a_json_float_written_with_an_exponent_is_not_an_amount() -> None:
    value = orjson.dumps(contract()).replace(b"1250", b"1.25e3")
    assert bad(b"acc-1", value).error_type == "schema_error"


@pytest.mark.parametrize("key", [None, b""])
def test_a_payment_without_a_key_is_key_missing(key: bytes | None) -> None:
    assert bad(key, orjson.dumps(contract())).error_type == "key_missing"


@pytest.mark.parametrize("key", [b"acc-2", b"ACC-1", b"acc-1 ", b'"acc-1"'])
def test_a_key_other_than_the_account_id_is_key_mismatch(key: bytes) -> None:
    error = bad(key, orjson.dumps(contract()))
    assert error.error_type == "key_mismatch"
    assert "acc-1" in error.message


def test_a_non_ascii_account_id_matches_its_utf8_key() -> None:
    body = contract(account_id="kontō-1")
    assert decode_payment("kontō-1".encode(), orjson.dumps(body)).account_id == "kontō-1"


# ---- commands and legs -----------------------------------------------------------------------

COMMANDS: list[AccountMessage] = [
    OpenAccount("cmd-1", "acc-1", "ann@example.com", "EUR"),
    ChangeAccountStatus("cmd-2", "acc-1", AccountStatus.OPEN),
    ChangeAccountStatus("cmd-3", "acc-1", AccountStatus.FROZEN),
    ChangeAccountStatus("cmd-4", "acc-1", AccountStatus.CLOSED),
    RequestTransfer("tr-1", "acc-1", "acc-2", 300, "EUR"),
    CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR"),
    RefundLeg("tr-1", "acc-1", "acc-2", 300, "EUR", "account is closed"),
]


@pytest.mark.parametrize("msg", COMMANDS, ids=lambda m: type(m).__name__)
def test_commands_round_trip(msg: AccountMessage) -> None:
    key = msg.account_id.encode()
    decoded = decode_command(key, encode_command(msg))
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_each_command_kind_is_named_on_the_wire() -> None:
    kinds = [orjson.loads(encode_command(m))["kind"] for m in COMMANDS]
    assert kinds == [
        "open_account",
        *["change_account_status"] * 3,
        "request_transfer",
        "credit_leg",
        "refund_leg",
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"kind": "close_account", "account_id": "acc-1"}, id="unknown-kind"),
        pytest.param({"account_id": "acc-1"}, id="no-kind"),
        pytest.param({"kind": None}, id="null-kind"),
        pytest.param({"kind": ["open_account"]}, id="list-kind"),
        pytest.param(["open_account"], id="array"),
        pytest.param("open_account", id="string"),
    ],
)
def test_an_unknown_command_is_a_schema_error(body: Any) -> None:
    with pytest.raises(BadMessage) as info:
        decode_command(b"acc-1", orjson.dumps(body))
    assert info.value.error_type == "schema_error"
    assert info.value.message == "kind: not a known command"


def mutated(msg: AccountMessage, **changes: Any) -> bytes:
    """The wire form of `msg` with fields changed; a field set to `...` is left out."""
    body = orjson.loads(encode_command(msg))
    body.update(changes)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(mutated(COMMANDS[0], extra="x"), id="extra-field"),
        pytest.param(mutated(COMMANDS[0], currency="eur"), id="bad-currency"),
        pytest.param(mutated(COMMANDS[0], owner_email="a" * 250 + "@x.io"), id="long-email"),
        pytest.param(mutated(COMMANDS[1], status="deleted"), id="unknown-status"),
        pytest.param(mutated(COMMANDS[4], amount=-1), id="negative-amount"),
        pytest.param(mutated(COMMANDS[4], amount=2.0), id="float-amount"),
        pytest.param(mutated(COMMANDS[5], amount=False), id="bool-amount"),
        pytest.param(mutated(COMMANDS[6], reason=None), id="null-reason"),
        pytest.param(mutated(COMMANDS[6], reason=...), id="missing-reason"),
        pytest.param(mutated(COMMANDS[4], transfer_id=...), id="missing-transfer-id"),
    ],
)
def test_an_invalid_command_is_a_schema_error(value: bytes) -> None:
    key = orjson.loads(value).get("account_id") or orjson.loads(value)["from_account"]
    with pytest.raises(BadMessage) as info:
        decode_command(key.encode(), value)
    assert info.value.error_type == "schema_error"


@pytest.mark.parametrize(
    ("msg", "wrong_key"),
    [
        (COMMANDS[0], b"acc-2"),
        (COMMANDS[4], b"acc-2"),  # a transfer request belongs to the source
        (COMMANDS[5], b"acc-1"),  # a credit leg belongs to the destination
        (COMMANDS[6], b"acc-2"),  # a refund goes back to the source
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else v.decode(),
)
def test_a_command_under_another_key_is_key_mismatch(msg: AccountMessage, wrong_key: bytes) -> None:
    with pytest.raises(BadMessage) as info:
        decode_command(wrong_key, encode_command(msg))
    assert info.value.error_type == "key_mismatch"
    with pytest.raises(BadMessage) as info:
        decode_command(None, encode_command(msg))
    assert info.value.error_type == "key_missing"


def test_undecodable_command_bytes_are_a_decode_error() -> None:
    with pytest.raises(BadMessage) as info:
        decode_command(b"acc-1", b"\x80\x81")
    assert info.value.error_type == "decode_error"


def test_encoding_anything_else_is_a_type_error() -> None:
    payment = Payment("e", PaymentKind.DEPOSIT, "acc-1", 1, "EUR", "2026-11-26T10:00:00+00:00")
    with pytest.raises(TypeError):
        encode_command(payment)


# ---- outputs ---------------------------------------------------------------------------------


def test_an_outcome_is_encoded_for_producers() -> None:
    o = PaymentOutcome("e1", "acc-1", PaymentKind.WITHDRAWAL, 5, "EUR", Decision.REJECTED, "no")
    assert orjson.loads(encode_outcome(o)) == {
        "event_id": "e1",
        "account_id": "acc-1",
        "type": "withdrawal",
        "amount": 5,
        "currency": "EUR",
        "status": "rejected",
        "reason": "no",
    }


@pytest.mark.parametrize("status", list(TransferStatus))
def test_transfer_events_round_trip(status: TransferStatus) -> None:
    e = TransferEvent("tr-1", status, "acc-1", "acc-2", 300, "EUR", "why" if status.final else None)
    assert decode_transfer_event(encode_transfer_event(e)) == e


@pytest.mark.parametrize(
    "value",
    [
        b"{}",
        b'{"transfer_id": "t", "status": "lost", "from_account": "a", "to_account": "b",'
        b' "amount": 1, "currency": "EUR"}',
        b'{"transfer_id": "t", "status": "debited", "from_account": "a", "to_account": "b",'
        b' "amount": "many", "currency": "EUR"}',
        b"[1, 2]",
        b"null",
    ],
)
def test_a_malformed_transfer_event_is_a_schema_error(value: bytes) -> None:
    with pytest.raises(BadMessage) as info:
        decode_transfer_event(value)
    assert info.value.error_type == "schema_error"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"amount": 1.0},
        {"amount": True},
        {"amount": 2**63 - 1},
        {"amount": 2**63},
        {"amount": 2**70},
        {"amount": 0},
        {"currency": "EUR\n"},
        {"currency": "eur"},
        {"event_id": ""},
        {"event_id": "x" * 129},
        {"event_id": "é" * 128},
        {"occurred_at": "2026-11-26 10:00:00"},
        {"occurred_at": "2026-11-26T10:00:00.123456+02:00"},
        {"occurred_at": 1764151200},
        {"type": "refund"},
        {"extra": {"nested": [1, 2]}},
    ],
)
def test_the_fast_decoder_never_accepts_what_the_contract_refuses(
    overrides: dict[str, Any],
) -> None:
    """`decode_payment`'s msgspec path and the pydantic model decide the same way."""
    from streams.wire import _decode_payment, decode_payment

    value = json.dumps(contract(**overrides)).encode()  # the standard library: any int size
    key = b"acc-1"
    try:
        expected: Any = _decode_payment(key, value)
    except BadMessage as bad:
        expected = (bad.error_type, bad.message)
    try:
        got: Any = decode_payment(key, value)
    except BadMessage as bad:
        got = (bad.error_type, bad.message)
    assert got == expected
