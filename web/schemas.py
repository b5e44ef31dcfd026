"""The HTTP API's bodies as pydantic models: the handlers validate requests with them, and
`web.openapi` builds `/openapi.json` from them, so the document cannot drift from the code.

Request models forbid unknown fields. Response models describe what the handlers send and
allow more fields where the shape is open (problem extensions, table records that may grow).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from streams.resilience import Dependency, State
from tables.messages import TransferStatus

# Account ids travel in paths, Location headers and Kafka keys: URL-safe, bounded.
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
AccountId = Annotated[StrictStr, Field(pattern=ACCOUNT_ID_PATTERN)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
# PostgreSQL's jsonb (the outbox) cannot hold U+0000; no other control character belongs in
# an email address either.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

# The largest integer every JSON parser holds exactly (2**53 - 1).
MAX_SAFE_INTEGER = 9_007_199_254_740_991


def _whole_number(value: object) -> object:
    # JSON has one number type, and JSON Schema counts 731.0 as the integer 731: take it as
    # such. Fractions still fail (StrictInt), and so do bools and strings.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Minor units: a positive whole number that survives any JSON parser unchanged.
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_SAFE_INTEGER), BeforeValidator(_whole_number)]

_ACCOUNT_ID = re.compile(ACCOUNT_ID_PATTERN.removeprefix("^").removesuffix("$"))


def is_account_id(value: str) -> bool:
    """Whether `value` can name an account (the rule `POST /v1/accounts` applies)."""
    return _ACCOUNT_ID.fullmatch(value) is not None


# ---- requests --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAccountBody(_Body):
    owner_email: Annotated[
        StrictStr,
        Field(
            min_length=3,
            max_length=254,
            pattern=NO_CONTROL_CHARACTERS,
            examples=["owner@example.com"],
        ),
    ]
    currency: Annotated[Currency, Field(examples=["EUR"])]
    account_id: Annotated[AccountId | None, Field(examples=["acc-1"])] = None


class TransferBody(_Body):
    from_account: Annotated[AccountId, Field(examples=["acc-1"])]
    to_account: Annotated[AccountId, Field(examples=["acc-2"])]
    amount: Annotated[Amount, Field(description="In minor units.", examples=[1250])]
    currency: Annotated[Currency, Field(examples=["EUR"])]
    memo: Annotated[StrictStr, Field(max_length=140)] | None = None


class EmptyBody(_Body):
    pass


# ---- responses -------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AccountAccepted(BaseModel):
    """202: the command is in the outbox; the ledger applies it shortly."""

    account_id: str
    status: Literal["pending"]


class TransferAccepted(BaseModel):
    """202: the transfer is in the outbox; `GET /v1/transfers/{id}?wait=N` follows it."""

    transfer_id: str
    status: Literal["pending"]


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, or `body`.")
    message: str


class Problem(_Open):
    """RFC 9457 problem details. `type` is `/problems/<slug>` (stable) or `about:blank`."""

    type: str = Field(json_schema_extra={"format": "uri-reference"})
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="On `invalid-request`: one entry per invalid field."
    )


class Activity(BaseModel):
    count: int
    volume: int


class Account(_Open):
    account_id: str
    currency: str
    status: Literal["open", "frozen", "closed"]
    balance: int = Field(description="In minor units of `currency`.")
    version: int
    activity_this_hour: Activity


class Transfer(_Open):
    transfer_id: str
    status: TransferStatus
    reason: str | None = Field(default=None, description="Why it was rejected or reversed.")
    from_account: str
    to_account: str
    amount: int
    currency: str


LagStatus = Literal["OK", "WARN", "ERR", "STOP", "STALL", "REWIND"]


class PartitionLag(_Open):
    topic: str
    partition: int
    committed: int | None = Field(description="The group's committed offset; null if none.")
    end: int = Field(description="The partition's end offset.")
    lag: int = Field(description="Messages behind.")
    lag_seconds: float = Field(description="Estimated time behind.")
    status: LagStatus


class ConsumerLag(_Open):
    """A consumer group's lag (streams/lag.py), as the worker last read it."""

    group: str
    status: LagStatus = Field(description="Burrow's evaluation: the worst partition status.")
    lag: int = Field(description="Messages behind, all partitions.")
    partitions: list[PartitionLag]
    error: str | None = None


class HealthCheck(_Open):
    componentType: str  # the draft's field names
    observedValue: float | int | str | None = None
    observedUnit: str | None = None
    status: Literal["pass", "warn", "fail"]
    time: str | None = None
    output: str | None = None


class Health(_Open):
    """`application/health+json` (draft-inadarei-api-health-check)."""

    status: Literal["pass", "warn", "fail"]
    version: str | None = None
    serviceId: str | None = None
    description: str | None = None
    checks: dict[str, list[HealthCheck]] | None = None


class OpsBacklog(_Open):
    rows: int = Field(description="Outbox rows not published yet (set-aside rows excluded).")
    oldest_s: float = Field(description="Age of the oldest of them, in seconds.")
    failed: int = Field(description="Rows set aside as unpublishable (`atlas outbox-failed`).")
    limit: int = Field(description="The backlog past which writes are shed with 503.")
    shedding: bool = Field(description="Whether writes are being shed now.")
    reading_age_s: float | None = Field(description="How old this reading is; null before one.")


class OpsDeadLetters(_Open):
    total: int
    by_topic: dict[str, int] = Field(description="Per source topic, since this worker started.")


class OpsRelay(_Open):
    leader: bool = Field(description="Whether this worker's relay publishes the outbox.")


class OperatorStatus(_Open):
    """`/ops/status.json`: what the operator page shows; counts, states and names only."""

    generated_at: str = Field(description="When this worker made the document (UTC, ISO 8601).")
    lag: ConsumerLag | None = Field(description="The latest lag reading; null before one.")
    backlog: OpsBacklog
    breakers: dict[Dependency, State] = Field(description="Each dependency's circuit breaker.")
    dead_letters: OpsDeadLetters
    relay: OpsRelay
