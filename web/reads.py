"""Reads of table state: `GET /v1/accounts/{id}` and `GET /v1/transfers/{id}`.

A key's state lives on the worker that owns its partition. A request that lands elsewhere is
proxied to the owner (Faust's router, by the murmur2 partition of the key); the owner answers
from its local table. `?wait=N` on a transfer long-polls, bounded, until its status is final.

A transfer that was accepted (202) but is not in the table yet reads as `pending`, from its
command in the outbox: following the 202's Location never meets a 404 for a transfer that
exists.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable

from streams.resilience import TRANSIENT_ERRORS, BreakerOpen, Breakers
from tables.errors import DependencyUnavailable
from tables.ledger import Account
from tables.messages import TransferStatus
from web.problems import problem_response

MAX_WAIT_S = 30.0
_RETRY_AFTER = "1"
_POLL_S = 0.1

PendingLookup = Callable[[str], Awaitable[dict[str, Any] | None]]
_CANNOT_TELL: tuple[type[Exception], ...] = (BreakerOpen, DependencyUnavailable, *TRANSIENT_ERRORS)

_PENDING_TRANSFER = """
SELECT payload FROM outbox
WHERE event_type = 'RequestTransfer' AND payload->>'transfer_id' = $1
LIMIT 1
"""


def outbox_pending_transfers(
    pool: Callable[[], Any], breakers: Breakers, timeout_s: float
) -> PendingLookup:
    """A transfer accepted but not applied yet, from its command in the outbox (or None)."""

    async def lookup(transfer_id: str) -> dict[str, Any] | None:
        current = pool()
        if current is None:
            raise DependencyUnavailable("PostgreSQL pool not started")

        async def query() -> Any:
            async with current.acquire(timeout=timeout_s) as conn:
                return await conn.fetchval(_PENDING_TRANSFER, transfer_id, timeout=timeout_s)

        payload = await breakers.call("postgres", query)
        if payload is None:
            return None
        command = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
        return {
            "transfer_id": transfer_id,
            "status": TransferStatus.PENDING.value,
            "reason": None,
            **{k: command[k] for k in ("from_account", "to_account", "amount", "currency")},
        }

    return lookup


async def _nothing_pending(transfer_id: str) -> dict[str, Any] | None:
    return None


class TableReads:
    def __init__(self, app: Any, pending: PendingLookup = _nothing_pending) -> None:
        self.app = app
        self.tables = app.ledger_tables
        self.pending = pending

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/accounts/{account_id}", self.get_account)
        router.add_get("/v1/transfers/{transfer_id}", self.get_transfer)

    async def _routed(
        self,
        table: Any,
        key: str,
        request: web.Request,
        local: Callable[[], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        if not self.app.tables.actives_ready or self.app.rebalancing:
            return _unavailable(request, "table state is being recovered")
        # The router hashes the key on the producer's metadata of the changelog topic: until
        # that metadata has every partition with a leader (a brand-new topic, a broker that
        # restarted) the owner cannot be found, and the refresh this starts will find it.
        producer = self.app.producer
        if producer.untracked([table.changelog_topic.get_topic_name()]):
            return _unavailable(request, "the partitions of this key are not known yet")
        try:
            response: web.StreamResponse = await self.app.router.route_req(
                table.name, key, self.app.web, request
            )
        except SameNode:
            return await local()
        except (ServiceUnavailable, aiohttp.ClientError, TimeoutError, KafkaError):
            producer.refresh_metadata()  # the owners may have moved
            return _unavailable(request, "the worker that owns this key cannot be reached")
        if response.status >= 400:  # the owner's problem body, with its media type back
            response.content_type = "application/problem+json"
        if response.status == 503:  # Faust's proxy keeps no header of the owner's answer
            response.headers["Retry-After"] = _RETRY_AFTER
        return response

    async def get_account(self, request: web.Request) -> web.StreamResponse:
        account_id = request.match_info["account_id"]

        async def local() -> web.Response:
            raw = self.tables.accounts.get(account_id.encode())
            account = Account.from_json(raw) if raw is not None else None
            if account is None or not account.opened:
                return _not_found(request, "account", account_id)
            body = account.public()
            body["activity_this_hour"] = account.activity_at(time.time())
            return web.Response(body=orjson.dumps(body), content_type="application/json")

        return await self._routed(self.tables.accounts, account_id, request, local)

    async def get_transfer(self, request: web.Request) -> web.StreamResponse:
        transfer_id = request.match_info["transfer_id"]
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT_S)
            if math.isnan(wait):  # would never reach its deadline: an endless poll
                raise ValueError(wait)
        except ValueError:
            return problem_response(
                400,
                slug="invalid-parameter",
                detail="wait must be a number of seconds",
                instance=request.path,
            )

        async def local() -> web.Response:
            deadline = time.monotonic() + wait
            while True:
                raw = self.tables.transfers.get(transfer_id.encode())
                record = raw
                final = record is not None and TransferStatus(record["status"]).final
                if final or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_POLL_S)
            if record is None:
                try:
                    record = await self.pending(transfer_id)
                except _CANNOT_TELL:
                    return _unavailable(request, "the outbox cannot be read to tell")
            if record is None:
                return _not_found(request, "transfer", transfer_id)
            return web.Response(body=orjson.dumps(record), content_type="application/json")

        return await self._routed(self.tables.transfers, transfer_id, request, local)


def _not_found(request: web.Request, what: str, key: str) -> web.Response:
    return problem_response(
        404,
        slug=f"{what}-not-found",
        title=f"{what.capitalize()} not found",
        detail=f"no {what} {key!r}",
        instance=request.path,
    )


def _unavailable(request: web.Request, detail: str) -> web.Response:
    return problem_response(
        503,
        slug="unavailable",
        detail=detail,
        instance=request.path,
        headers={"Retry-After": _RETRY_AFTER},
    )
