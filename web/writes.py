"""The write API: open, freeze, unfreeze and close accounts, and request transfers.

A write is accepted (202) once its command is in the PostgreSQL outbox, in the same
transaction as its idempotency key; the relay publishes it to the commands topic and the ledger
agents apply it. `Idempotency-Key` is required on every POST; the event id (transfer id,
command id) is fixed by the first request, so a retried request and the stream's dedup form
one chain.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import ValidationError

from streams import tracing
from streams.resilience import TRANSIENT_ERRORS, BreakerOpen, Breakers
from streams.settings import Settings
from streams.topics import COMMANDS
from streams.wire import encode_command
from tables.messages import (
    AccountMessage,
    AccountStatus,
    ChangeAccountStatus,
    OpenAccount,
    RequestTransfer,
)
from web import idempotency
from web.idempotency import Effect, OutboxRow
from web.problems import problem_response
from web.schemas import EmptyBody, OpenAccountBody, TransferBody, is_account_id
from web.tracing import outbox_insert, request_headers

IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_KEY_LENGTH = 255


class WriteViews:
    def __init__(
        self,
        settings: Settings,
        pool: Callable[[], asyncpg.Pool | None],
        client_of: Callable[[web.Request], uuid.UUID | None],
        breakers: Breakers | None = None,
        shedding: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._client_of = client_of
        self.breakers = breakers or Breakers()
        self._shedding = shedding  # True while the outbox backlog is over its limit
        # Concurrent requests share transactions; each is answered after its own commit.
        self.group = idempotency.GroupCommit(
            pool,
            retention_s=settings.idempotency_retention_s,
            timeout_s=settings.postgres_timeout_s,
        )
        self.commands_topic = settings.topic_prefix + COMMANDS

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/accounts", self.open_account)
        router.add_post("/v1/accounts/{account_id}/freeze", self.freeze)
        router.add_post("/v1/accounts/{account_id}/unfreeze", self.unfreeze)
        router.add_post("/v1/accounts/{account_id}/close", self.close)
        router.add_post("/v1/transfers", self.request_transfer)

    # ---- views ----------------------------------------------------------------------------

    async def open_account(self, request: web.Request) -> web.StreamResponse:
        async def effect(body: OpenAccountBody, _: web.Request) -> Effect:
            account_id = body.account_id or f"acc-{uuid.uuid4().hex[:20]}"
            command = OpenAccount(str(uuid.uuid4()), account_id, body.owner_email, body.currency)
            return self._accepted(
                command, {"account_id": account_id, "status": "pending"}, account_id
            )

        return await self._handle(request, OpenAccountBody, effect, "/v1/accounts/{}")

    async def request_transfer(self, request: web.Request) -> web.StreamResponse:
        async def effect(body: TransferBody, _: web.Request) -> Effect:
            transfer_id = str(uuid.uuid4())
            command = RequestTransfer(
                transfer_id, body.from_account, body.to_account, body.amount, body.currency
            )
            return self._accepted(
                command, {"transfer_id": transfer_id, "status": "pending"}, transfer_id
            )

        return await self._handle(request, TransferBody, effect, "/v1/transfers/{}")

    async def freeze(self, request: web.Request) -> web.StreamResponse:
        return await self._change_status(request, AccountStatus.FROZEN)

    async def unfreeze(self, request: web.Request) -> web.StreamResponse:
        return await self._change_status(request, AccountStatus.OPEN)

    async def close(self, request: web.Request) -> web.StreamResponse:
        return await self._change_status(request, AccountStatus.CLOSED)

    async def _change_status(
        self, request: web.Request, status: AccountStatus
    ) -> web.StreamResponse:
        account_id = request.match_info["account_id"]
        if not is_account_id(account_id):  # no account has it; it must not reach a header
            return _problem(request, 404, "account-not-found", f"no account {account_id!r}")

        async def effect(body: EmptyBody, _: web.Request) -> Effect:
            command = ChangeAccountStatus(str(uuid.uuid4()), account_id, status)
            return self._accepted(
                command, {"account_id": account_id, "status": "pending"}, account_id
            )

        return await self._handle(request, EmptyBody, effect, "/v1/accounts/{}")

    # ---- the shared path: validate, claim the key, write the outbox, answer ----------------

    def _accepted(self, command: AccountMessage, body: dict[str, Any], resource: str) -> Effect:
        row = OutboxRow(
            aggregate_type="account",
            aggregate_id=command.account_id,
            event_type=type(command).__name__,
            topic=self.commands_topic,
            payload_json=encode_command(command).decode(),
        )
        return Effect(202, body, resource, [row])

    async def _handle(
        self,
        request: web.Request,
        model: type[Any],
        effect: Callable[[Any, web.Request], Any],
        location: str,
    ) -> web.StreamResponse:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if not key or len(key) > _MAX_KEY_LENGTH:
            return _problem(
                request,
                400,
                "idempotency-key-missing",
                f"every POST needs an {IDEMPOTENCY_HEADER} header (1-{_MAX_KEY_LENGTH} chars)",
            )
        if request.content_type != "application/json" and request.can_read_body:
            return _problem(request, 415, "unsupported-media-type", "send application/json")
        try:
            raw = await request.read() if request.can_read_body else b"{}"
        except web.HTTPRequestEntityTooLarge:
            return _problem(
                request,
                413,
                "body-too-large",
                f"the body is larger than {self.settings.max_body_bytes} bytes",
            )
        try:
            parsed = orjson.loads(raw or b"{}")
            body = model.model_validate(parsed)
        except orjson.JSONDecodeError as exc:
            return _problem(request, 400, "malformed-json", f"the body is not JSON: {exc}")
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
                for e in exc.errors()
            ]
            return _problem(
                request, 422, "invalid-request", "the request body is not valid", errors=errors
            )
        client_id = self._client_of(request)
        pool = self._pool()
        if client_id is None or pool is None:
            return _problem(request, 503, "unavailable", "the write path is not ready")
        if self._shedding():
            return _problem(
                request,
                503,
                "outbox-backlog",
                "too many accepted writes are still waiting to be published; retry later",
                headers={"Retry-After": "5"},
            )
        new_effect = await effect(body, request)
        s = self.settings

        pending = idempotency.Pending(
            client_id,
            key,
            idempotency.fingerprint(request.method, request.path, parsed),
            new_effect,
            headers=request_headers(request),
        )

        async def write() -> idempotency.Result:
            if not tracing.enabled():
                return await self.group.submit(pending)
            # Each attempt is its own span; its rows carry its traceparent.
            with outbox_insert(pending) as traced:
                return await self.group.submit(traced)

        try:
            # A transient failure rolled the whole transaction back: retrying it is safe.
            result = await self.breakers.retrying(
                "postgres", write, max_tries=s.retry_max_tries, max_time_s=s.retry_max_s
            )
        except BreakerOpen as exc:
            return _problem(
                request,
                503,
                "unavailable",
                "the write store is failing; retry later",
                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
            )
        except idempotency.KeyReusedForAnotherRequest:
            return _problem(
                request,
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was used for a different request",
            )
        except TRANSIENT_ERRORS:
            # PostgreSQL down, shutting down or too slow: the transaction did not commit, and
            # the client may retry the key.
            return _problem(
                request,
                503,
                "unavailable",
                "the write store is not answering; retry later",
                headers={"Retry-After": "2"},
            )
        except idempotency.RequestInFlight:
            return _problem(
                request,
                409,
                "request-in-flight",
                "a request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        headers = {
            "Location": location.format(result.body.get("transfer_id") or result.body["account_id"])
        }
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return web.Response(
            body=orjson.dumps(result.body),
            status=result.status,
            content_type="application/json",
            headers=headers,
        )


def _problem(
    request: web.Request,
    status: int,
    slug: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    return problem_response(
        status, slug=slug, detail=detail, instance=request.path, headers=headers, **extensions
    )
