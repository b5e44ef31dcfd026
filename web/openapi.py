"""The OpenAPI 3.1 document of every route a worker serves, built from `web.schemas`.

Bodies come from the pydantic models the handlers validate with (`model_json_schema`, their
`$defs` gathered under `components.schemas`); the operations below list what each handler and
the middlewares in front of it can answer. `/v1` routes need a bearer API key; health,
metrics and the docs themselves are open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from web.ops_page import ASSETS as OPS_ASSETS
from web.ops_page import PAGE_PATH as OPS_PAGE
from web.ops_page import STATUS_PATH as OPS_STATUS
from web.problems import PROBLEM_JSON
from web.schemas import (
    ACCOUNT_ID_PATTERN,
    Account,
    AccountAccepted,
    ConsumerLag,
    EmptyBody,
    Health,
    OpenAccountBody,
    OperatorStatus,
    Problem,
    Transfer,
    TransferAccepted,
    TransferBody,
)

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
BEARER = "bearerAuth"
JSON = "application/json"
HEALTH_JSON = "application/health+json"
METRICS_TEXT = "text/plain"
HTML = "text/html"

MAX_WAIT_S = 30

Mode = Literal["validation", "serialization"]


class Components:
    """Collects model schemas (and their `$defs`) under `components.schemas`."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, model: type[BaseModel], mode: Mode) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        self._add(model.__name__, schema)
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        known = self.schemas.setdefault(name, schema)
        if known != schema:  # two models of one name, or one model differing by mode
            raise ValueError(f"conflicting schemas named {name!r}")


# ---- responses -------------------------------------------------------------------------------


def _header(ref: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{ref}"}


HEADERS: dict[str, dict[str, Any]] = {
    "CorrelationId": {
        "description": "The caller's `X-Correlation-ID` (or `X-Request-ID`) when given, "
        "else a new one; it is in every log line of the request.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "Where the accepted resource can be read.",
        "required": True,
        "schema": {"type": "string"},
    },
    "IdempotentReplayed": {
        "description": "Present when this is the stored answer to an earlier request with "
        "the same Idempotency-Key and body.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimitLimit": {
        "description": "Requests this client may make at once (its burst).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimitRemaining": {
        "description": "Requests this client may still make at once.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWWAuthenticate": {
        "description": "The bearer challenge (RFC 6750).",
        "required": True,
        "schema": {"type": "string"},
    },
}


def _required(header: str) -> dict[str, Any]:
    return {**HEADERS[header], "required": True}


@dataclass(frozen=True)
class Answer:
    """One documented response: its description, media types with models, and headers."""

    description: str
    content: Mapping[str, type[BaseModel] | dict[str, Any]] = field(default_factory=dict)
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def render(self, components: Components) -> dict[str, Any]:
        content = {
            media: {"schema": _schema(components, model, "serialization")}
            for media, model in self.content.items()
        }
        out: dict[str, Any] = {
            "description": self.description,
            "headers": {"X-Correlation-ID": _header("CorrelationId"), **self.headers},
        }
        if content:
            out["content"] = content
        return out


def _problem(description: str, headers: Mapping[str, dict[str, Any]] | None = None) -> Answer:
    return Answer(description, {PROBLEM_JSON: Problem}, headers or {})


_RATE_HEADERS = {
    "RateLimit-Limit": _header("RateLimitLimit"),
    "RateLimit-Remaining": _header("RateLimitRemaining"),
}

# What every /v1 route can answer besides its own outcomes: auth, rate limit, availability,
# the request deadline and the edge middleware's last resort.
_V1_REFUSALS: dict[int, Answer] = {
    401: _problem(
        "No or an unknown API key (`unauthenticated`).",
        {"WWW-Authenticate": _header("WWWAuthenticate")},
    ),
    403: _problem("The API client has been revoked (`forbidden`)."),
    429: Answer(
        "This client's rate is spent (`rate-limited`).",
        {PROBLEM_JSON: Problem},
        {"Retry-After": _required("RetryAfter"), **_RATE_HEADERS},
    ),
    500: _problem("An unexpected failure (`internal-error`)."),
    503: Answer(
        "A dependency is not answering, or the service is shedding load (`unavailable`).",
        {PROBLEM_JSON: Problem},
        {"Retry-After": _header("RetryAfter")},
    ),
    504: _problem("The request did not finish within its deadline (`deadline-exceeded`)."),
}

_WRITE_REFUSALS: dict[int, Answer] = {
    400: _problem(
        "No or too long an Idempotency-Key (`idempotency-key-missing`), or a body that is not "
        "JSON (`malformed-json`)."
    ),
    409: Answer(
        "A request with this Idempotency-Key is still in flight (`request-in-flight`).",
        {PROBLEM_JSON: Problem},
        {"Retry-After": _required("RetryAfter")},
    ),
    413: _problem("The body is too large."),
    415: _problem("The body is not `application/json` (`unsupported-media-type`)."),
    422: _problem(
        "The body does not match the schema (`invalid-request`, with `errors`), or the "
        "Idempotency-Key was used for another request (`idempotency-key-reused`)."
    ),
}


def _accepted(model: type[BaseModel]) -> Answer:
    return Answer(
        "Accepted: the command is in the outbox and is applied asynchronously.",
        {JSON: model},
        {
            "Location": _header("Location"),
            "Idempotent-Replayed": _header("IdempotentReplayed"),
            **_RATE_HEADERS,
        },
    )


def _read(model: type[BaseModel], what: str) -> Answer:
    return Answer(f"The {what}.", {JSON: model}, _RATE_HEADERS)


def _schema(
    components: Components, model: type[BaseModel] | dict[str, Any], mode: Mode
) -> dict[str, Any]:
    return components.ref(model, mode) if isinstance(model, type) else model


# ---- operations ------------------------------------------------------------------------------


def _path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_ACCOUNT_ID = _path_param("account_id", "The account's id.", pattern=ACCOUNT_ID_PATTERN)
_TRANSFER_ID = _path_param("transfer_id", "The transfer's id, from its 202 answer.")
_IDEMPOTENCY_KEY = {"$ref": "#/components/parameters/IdempotencyKey"}

PARAMETERS: dict[str, dict[str, Any]] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "description": "Unique per request and API client (draft-ietf-httpapi-idempotency-key-"
        "header). The same key and body replays the stored answer; another body is 422.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Answer]
    parameters: tuple[dict[str, Any], ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    secured: bool = False
    description: str | None = None

    def render(self, components: Components) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operationId": self.operation_id,
            "summary": self.summary,
            "tags": [self.tag],
        }
        if self.description:
            out["description"] = self.description
        if self.parameters:
            out["parameters"] = list(self.parameters)
        if self.body is not None:
            out["requestBody"] = {
                "required": self.body_required,
                "content": {JSON: {"schema": components.ref(self.body, "validation")}},
            }
        out["responses"] = {
            str(status): answer.render(components)
            for status, answer in sorted(self.responses.items())
        }
        if self.secured:
            out["security"] = [{BEARER: []}]
        return out


def _write(
    path: str,
    operation_id: str,
    summary: str,
    tag: str,
    body: type[BaseModel],
    accepted: type[BaseModel],
    *,
    body_required: bool = True,
    path_params: tuple[dict[str, Any], ...] = (),
    description: str | None = None,
    refusals: Mapping[int, Answer] | None = None,
) -> Operation:
    return Operation(
        "post",
        path,
        operation_id,
        summary,
        tag,
        {202: _accepted(accepted), **_WRITE_REFUSALS, **(refusals or {}), **_V1_REFUSALS},
        parameters=(*path_params, _IDEMPOTENCY_KEY),
        body=body,
        body_required=body_required,
        secured=True,
        description=description,
    )


def _status_change(verb: str, summary: str) -> Operation:
    return _write(
        f"/v1/accounts/{{account_id}}/{verb}",
        f"{verb}Account",
        summary,
        "accounts",
        EmptyBody,
        AccountAccepted,
        body_required=False,
        path_params=(_ACCOUNT_ID,),
        description="No body, or `{}`. The ledger rejects the change when the account does not "
        "allow it (unknown, closed, or a non-zero balance for close).",
        refusals={404: _problem("No account can have this id (`account-not-found`).")},
    )


_NOT_FOUND = {404: _problem("No such resource (`account-not-found`, `transfer-not-found`).")}
_BAD_WAIT = {400: _problem("`wait` is not a number (`invalid-parameter`).")}


def _open(
    path: str, operation_id: str, summary: str, tag: str, responses: Mapping[int, Answer]
) -> Operation:
    return Operation("get", path, operation_id, summary, tag, responses)


def _health(ok: str, failing: str | None) -> dict[int, Answer]:
    answers = {200: Answer(ok, {HEALTH_JSON: Health}, {})}
    if failing:
        answers[503] = Answer(failing, {HEALTH_JSON: Health}, {})
    return answers


ASSETS_PATH = "/docs/assets/{asset}"


def operations(assets: Iterable[str] = ()) -> list[Operation]:
    """Every documented operation; `assets` are the file names served under `ASSETS_PATH`."""
    asset_names = sorted(assets)
    return [
        _write(
            "/v1/accounts",
            "openAccount",
            "Open an account",
            "accounts",
            OpenAccountBody,
            AccountAccepted,
            description="`account_id` is generated when not given.",
        ),
        _status_change("freeze", "Freeze an account"),
        _status_change("unfreeze", "Unfreeze an account"),
        _status_change("close", "Close an account (its balance must be zero)"),
        _write(
            "/v1/transfers",
            "requestTransfer",
            "Request a transfer between two accounts",
            "transfers",
            TransferBody,
            TransferAccepted,
            description="`amount` is in minor units. The ledger debits the source (or rejects "
            "the transfer) and credits the destination (or reverses it).",
        ),
        Operation(
            "get",
            "/v1/accounts/{account_id}",
            "getAccount",
            "Read an account",
            "accounts",
            {200: _read(Account, "account"), **_NOT_FOUND, **_V1_REFUSALS},
            parameters=(_ACCOUNT_ID,),
            secured=True,
        ),
        Operation(
            "get",
            "/v1/transfers/{transfer_id}",
            "getTransfer",
            "Read a transfer, optionally waiting for its final status",
            "transfers",
            {200: _read(Transfer, "transfer"), **_BAD_WAIT, **_NOT_FOUND, **_V1_REFUSALS},
            parameters=(
                _TRANSFER_ID,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Seconds to long-poll until the status is final "
                    f"(completed, rejected, reversed); at most {MAX_WAIT_S}.",
                    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                },
            ),
            secured=True,
        ),
        Operation(
            "get",
            "/v1/ops/lag",
            "getConsumerLag",
            "Read the consumer lag of this worker's group, or of a group it watches",
            "operations",
            {
                200: _read(ConsumerLag, "consumer lag"),
                400: _problem("A query parameter other than `group` (`invalid-query`)."),
                404: _problem("The worker does not watch that group (`group-not-watched`)."),
                **_V1_REFUSALS,
            },
            parameters=(
                {
                    "name": "group",
                    "in": "query",
                    "required": False,
                    "description": "A group from ATLAS_LAG_WATCH_GROUPS; the worker's own group "
                    "when absent. 503 until the first reading.",
                    "schema": {"type": "string"},
                },
            ),
            secured=True,
        ),
        _open(
            "/health/live",
            "live",
            "Liveness: the process and its event loop answer",
            "operations",
            _health("Alive.", None),
        ),
        _open(
            "/health/ready",
            "ready",
            "Readiness: Kafka and PostgreSQL answer, migrations applied, tables recovered",
            "operations",
            _health("Ready (Redis down only degrades it to `warn`).", "Not ready."),
        ),
        _open(
            "/health",
            "health",
            "Every dependency check, with timings",
            "operations",
            _health("Passing or degraded (`warn`).", "A dependency check fails."),
        ),
        _open(
            "/metrics",
            "metrics",
            "Prometheus metrics",
            "operations",
            {200: Answer("Prometheus text format.", {METRICS_TEXT: {"type": "string"}})},
        ),
        _open(
            OPS_PAGE,
            "opsPage",
            "The operator page: lag, outbox backlog, breakers, dead letters, relay",
            "operations",
            {200: Answer("HTML; it polls `/ops/status.json`.", {HTML: {}})},
        ),
        _open(
            OPS_STATUS,
            "opsStatus",
            "What the operator page shows, as JSON",
            "operations",
            {200: Answer("This worker's view.", {JSON: OperatorStatus})},
        ),
        Operation(
            "get",
            OPS_PAGE + "/{asset}",
            "opsAsset",
            "The operator page's script and style",
            "operations",
            {
                200: Answer(
                    "The file.",
                    {media: {"type": "string"} for media, _ in OPS_ASSETS.values()},
                ),
                404: _problem("No such asset."),
            },
            parameters=(_path_param("asset", "The file's name.", enum=list(OPS_ASSETS)),),
        ),
        _open(
            "/openapi.json",
            "openapi",
            "This document",
            "docs",
            {200: Answer("OpenAPI 3.1.", {JSON: {"type": "object"}})},
        ),
        _open("/docs", "swaggerUi", "Swagger UI", "docs", {200: Answer("HTML.", {HTML: {}})}),
        _open("/redoc", "redoc", "ReDoc", "docs", {200: Answer("HTML.", {HTML: {}})}),
        Operation(
            "get",
            ASSETS_PATH,
            "docsAsset",
            "The docs pages' scripts, styles and icon (served from an installed package)",
            "docs",
            {
                200: Answer(
                    "The file.",
                    {
                        "text/javascript": {"type": "string"},
                        "text/css": {"type": "string"},
                        "image/png": {},
                    },
                ),
                404: _problem("No such asset."),
            },
            parameters=(
                _path_param(
                    "asset", "The file's name.", **({"enum": asset_names} if asset_names else {})
                ),
            ),
        ),
    ]


def build_document(version: str, assets: Iterable[str] = ()) -> dict[str, Any]:
    components = Components()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(assets):
        paths.setdefault(op.path, {})[op.method] = op.render(components)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Atlas",
            "version": version,
            "summary": "A Kafka-first money ledger: accounts, transfers, and their state.",
            "description": "Writes are accepted (202) once their command is in the outbox and "
            "are applied by the ledger shortly after; reads serve the ledger's tables. "
            "Errors are `application/problem+json` (RFC 9457) with a stable `type`. "
            "Every POST needs an `Idempotency-Key`.",
        },
        "tags": [
            {"name": "accounts", "description": "Open, freeze, unfreeze, close and read."},
            {"name": "transfers", "description": "Move money between two accounts."},
            {
                "name": "operations",
                "description": "Health, metrics and the operator page; no credentials.",
            },
            {"name": "docs", "description": "This document and its viewers; no credentials."},
        ],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `atlas clients-create`.",
                }
            },
        },
    }
