"""The request models' edges: what the handlers accept and what they refuse."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from web.schemas import MAX_SAFE_INTEGER, OpenAccountBody, TransferBody, is_account_id


def transfer(amount: Any) -> TransferBody:
    return TransferBody.model_validate(
        {"from_account": "a", "to_account": "b", "amount": amount, "currency": "EUR"}
    )


@pytest.mark.parametrize("amount", [1, 731.0, MAX_SAFE_INTEGER])
def test_amounts_are_whole_numbers_as_json_schema_counts_them(amount: Any) -> None:
    assert transfer(amount).amount == int(amount)
    assert type(transfer(amount).amount) is int


@pytest.mark.parametrize(
    "amount", [0, -1, 731.5, True, "731", None, MAX_SAFE_INTEGER + 1, 1e30, float("nan")]
)
def test_other_amounts_are_refused(amount: Any) -> None:
    with pytest.raises(ValidationError):
        transfer(amount)


@pytest.mark.parametrize("email", ["a\x00b@example.com", "a\nb@example.com", "ab\x7f"])
def test_an_owner_email_with_control_characters_is_refused(email: str) -> None:
    # U+0000 cannot be stored in the outbox's jsonb; it used to be a 500.
    with pytest.raises(ValidationError):
        OpenAccountBody.model_validate({"owner_email": email, "currency": "EUR"})
    assert OpenAccountBody.model_validate({"owner_email": "zoë@example.com", "currency": "EUR"})


def test_account_ids_are_url_safe_and_bounded() -> None:
    assert is_account_id("acc-1") and is_account_id("a.b:c_d-9") and is_account_id("x" * 64)
    for bad in ("", "x" * 65, "acc\n", "a\x07b", "a/b", "a b", "é"):
        assert not is_account_id(bad), bad
