"""Bytes to domain messages and back: the payment contract, internal commands and legs, outputs.

Decoding never raises anything but `BadMessage`, whose `error_type` names the dead-letter reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from tables.errors import AtlasError
from tables.messages import (
    AccountMessage,
    AccountStatus,
    ChangeAccountStatus,
    CreditLeg,
    OpenAccount,
    Payment,
    PaymentKind,
    PaymentOutcome,
    RefundLeg,
    RequestTransfer,
    TransferEvent,
    TransferStatus,
)


class BadMessage(AtlasError):
    """Input that can never be applied; it goes to the dead-letter topic with this reason."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[StrictInt, Field(gt=0)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PaymentEventV1(_Wire):
    """`atlas.payments.v1`: the external contract (DESIGN.md). Unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    event_id: Id
    type: Literal["deposit", "withdrawal"]
    account_id: Id
    amount: Amount
    currency: Currency
    occurred_at: datetime


class OpenAccountV1(_Wire):
    kind: Literal["open_account"]
    command_id: Id
    account_id: Id
    owner_email: Annotated[StrictStr, Field(max_length=254)]
    currency: Currency


class ChangeAccountStatusV1(_Wire):
    kind: Literal["change_account_status"]
    command_id: Id
    account_id: Id
    status: Literal["open", "frozen", "closed"]


class _TransferFields(_Wire):
    transfer_id: Id
    from_account: Id
    to_account: Id
    amount: Amount
    currency: Currency


class RequestTransferV1(_TransferFields):
    kind: Literal["request_transfer"]


class CreditLegV1(_TransferFields):
    kind: Literal["credit_leg"]


class RefundLegV1(_TransferFields):
    kind: Literal["refund_leg"]
    reason: StrictStr


_COMMANDS: dict[str, type[_Wire]] = {
    "open_account": OpenAccountV1,
    "change_account_status": ChangeAccountStatusV1,
    "request_transfer": RequestTransferV1,
    "credit_leg": CreditLegV1,
    "refund_leg": RefundLegV1,
}


def _load(value: bytes | None) -> Any:
    if value is None:
        raise BadMessage("decode_error", "empty value")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage("decode_error", f"not UTF-8 JSON: {exc}") from None


def _schema_error(exc: ValidationError) -> BadMessage:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    return BadMessage("schema_error", f"{where}: {first['msg']}")


def _check_key(key: bytes | None, account_id: str) -> None:
    if not key:
        raise BadMessage("key_missing", "message has no key; expected the account id")
    if key != account_id.encode():
        raise BadMessage(
            "key_mismatch",
            f"key {key.decode(errors='replace')!r} is not the account id {account_id!r}",
        )


# ---- the hot path: msgspec checks the same contract in a few microseconds ----------------------
# What these structs accept, the pydantic models above accept too (the same types, lengths,
# pattern and bound; msgspec is the stricter on datetimes and integers): anything they refuse
# is decoded again by pydantic, which accepts it or words the dead-letter reason.
# tests/unit/test_wire.py feeds both the same valid and invalid events.

_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# \A...\Z: Python's $ would let a trailing newline through (pydantic's regex does not).
_FastCurrency = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{3}\Z")]
_FastAmount = Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]  # pydantic refuses larger


class _FastPayment(msgspec.Struct):
    event_id: _FastId
    type: Literal["deposit", "withdrawal"]
    account_id: _FastId
    amount: _FastAmount
    currency: _FastCurrency
    occurred_at: datetime


_fast_payment = msgspec.json.Decoder(_FastPayment)
_KINDS = {"deposit": PaymentKind.DEPOSIT, "withdrawal": PaymentKind.WITHDRAWAL}


def decode_payment(key: bytes | None, value: bytes | None) -> Payment:
    if value is not None:
        try:
            fast = _fast_payment.decode(value)
        except msgspec.MsgspecError:
            pass  # pydantic decides, and words the reason
        else:
            _check_key(key, fast.account_id)
            return Payment(
                fast.event_id,
                _KINDS[fast.type],
                fast.account_id,
                fast.amount,
                fast.currency,
                fast.occurred_at.isoformat(),
            )
    return _decode_payment(key, value)


def _decode_payment(key: bytes | None, value: bytes | None) -> Payment:
    raw = _load(value)
    if not isinstance(raw, dict):
        raise BadMessage("schema_error", "value: expected a JSON object")
    try:
        p = PaymentEventV1.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    _check_key(key, p.account_id)
    return Payment(
        p.event_id,
        PaymentKind(p.type),
        p.account_id,
        p.amount,
        p.currency,
        p.occurred_at.isoformat(),
    )


def decode_command(key: bytes | None, value: bytes | None) -> AccountMessage:
    """Commands and legs on the internal topics, told apart by `kind`."""
    raw = _load(value)
    model = _COMMANDS.get(str(raw.get("kind"))) if isinstance(raw, dict) else None
    if model is None:
        raise BadMessage("schema_error", "kind: not a known command")
    try:
        wire = model.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(exc) from None
    msg = _to_domain(wire)
    _check_key(key, msg.account_id)
    return msg


def _to_domain(wire: _Wire) -> AccountMessage:
    match wire:
        case OpenAccountV1():
            return OpenAccount(wire.command_id, wire.account_id, wire.owner_email, wire.currency)
        case ChangeAccountStatusV1():
            return ChangeAccountStatus(wire.command_id, wire.account_id, AccountStatus(wire.status))
        case RefundLegV1():
            return RefundLeg(
                wire.transfer_id,
                wire.from_account,
                wire.to_account,
                wire.amount,
                wire.currency,
                wire.reason,
            )
        case _TransferFields():
            cls = RequestTransfer if isinstance(wire, RequestTransferV1) else CreditLeg
            return cls(
                wire.transfer_id, wire.from_account, wire.to_account, wire.amount, wire.currency
            )
    raise TypeError(wire)


def encode_command(msg: AccountMessage) -> bytes:
    """The internal wire form of a command or leg (the inverse of `decode_command`)."""
    match msg:
        case OpenAccount():
            body: dict[str, Any] = {
                "kind": "open_account",
                "command_id": msg.command_id,
                "account_id": msg.account_id,
                "owner_email": msg.owner_email,
                "currency": msg.currency,
            }
        case ChangeAccountStatus():
            body = {
                "kind": "change_account_status",
                "command_id": msg.command_id,
                "account_id": msg.account_id,
                "status": msg.status.value,
            }
        case RequestTransfer() | CreditLeg() | RefundLeg():
            kind = {
                RequestTransfer: "request_transfer",
                CreditLeg: "credit_leg",
                RefundLeg: "refund_leg",
            }[type(msg)]
            body = {
                "kind": kind,
                "transfer_id": msg.transfer_id,
                "from_account": msg.from_account,
                "to_account": msg.to_account,
                "amount": msg.amount,
                "currency": msg.currency,
            }
            if isinstance(msg, RefundLeg):
                body["reason"] = msg.reason
        case _:
            raise TypeError(msg)
    return orjson.dumps(body)


def encode_outcome(o: PaymentOutcome) -> bytes:
    return orjson.dumps(
        {
            "event_id": o.event_id,
            "account_id": o.account_id,
            "type": o.kind,  # orjson writes an enum as its value
            "amount": o.amount,
            "currency": o.currency,
            "status": o.status,
            "reason": o.reason,
        }
    )


def encode_transfer_event(e: TransferEvent) -> bytes:
    return orjson.dumps(
        {
            "transfer_id": e.transfer_id,
            "status": e.status.value,
            "from_account": e.from_account,
            "to_account": e.to_account,
            "amount": e.amount,
            "currency": e.currency,
            "reason": e.reason,
        }
    )


def decode_transfer_event(value: bytes) -> TransferEvent:
    raw = _load(value)
    try:
        return TransferEvent(
            raw["transfer_id"],
            TransferStatus(raw["status"]),
            raw["from_account"],
            raw["to_account"],
            int(raw["amount"]),
            raw["currency"],
            raw.get("reason"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadMessage("schema_error", f"transfer event: {exc!r}") from None
