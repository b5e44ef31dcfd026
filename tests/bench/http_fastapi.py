"""Peer (b) of the HTTP write benchmark: Atlas's per-request work in FastAPI on uvicorn.

    DATABASE_URL=... uvicorn tests.bench.http_fastapi:app --port PORT --loop uvloop --http httptools

`POST /v1/transfers` does what Atlas's write path does, written the way FastAPI is usually
written (a dependency for auth, a typed body parameter):

- bearer-key authentication against `api_clients` through Atlas's own `ClientStore` (SHA-256 of
  the key, a per-process TTL cache);
- the body validated by FastAPI with Atlas's `TransferBody` model;
- `web.idempotency.run_batch` with one request: the idempotency row and the outbox row (the
  encoded `RequestTransfer` command) in one transaction, with the NOTIFY, then 202 with a
  `Location`. Atlas shares that transaction among concurrent requests (group commit); this
  peer runs one per request, as a handler awaiting its own transaction does.

Rate limiting and Atlas's middlewares (correlation ids, metrics, problem+json) are not copied.
`GET /health` answers 200 once the pool is open.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response

from streams.settings import Settings
from streams.topics import COMMANDS
from streams.wire import encode_command
from tables.errors import DependencyUnavailable
from tables.messages import RequestTransfer
from web import idempotency
from web.auth import ApiClient, ClientStore, looks_like_key
from web.idempotency import Effect, OutboxRow
from web.writes import TransferBody

_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings()
    async with asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=settings.postgres_pool_max,
        server_settings=idempotency.pool_settings(settings.postgres_lock_timeout_s),
    ) as pool:
        app.state.settings = settings
        app.state.pool = pool
        app.state.clients = ClientStore(lambda: pool, timeout_s=settings.postgres_timeout_s)
        yield


app = FastAPI(lifespan=lifespan)


async def authenticated_client(
    request: Request, authorization: Annotated[str, Header()] = ""
) -> ApiClient:
    scheme, _, credentials = authorization.strip().partition(" ")
    key = credentials.strip()
    if scheme.lower() != "bearer" or not looks_like_key(key):
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer realm="atlas"'})
    try:
        client: ApiClient | None = await request.app.state.clients.lookup(key)
    except DependencyUnavailable:
        raise HTTPException(503, headers={"Retry-After": "1"}) from None
    if client is None:
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer realm="atlas"'})
    if client.revoked:
        raise HTTPException(403)
    return client


@app.post("/v1/transfers", status_code=202)
async def request_transfer(
    body: TransferBody,
    request: Request,
    client: Annotated[ApiClient, Depends(authenticated_client)],
    idempotency_key: Annotated[str, Header(min_length=1, max_length=255)],
) -> Response:
    settings: Settings = request.app.state.settings
    transfer_id = str(uuid.uuid4())
    command = RequestTransfer(
        transfer_id, body.from_account, body.to_account, body.amount, body.currency
    )
    effect = Effect(
        202,
        {"transfer_id": transfer_id, "status": "pending"},
        transfer_id,
        [
            OutboxRow(
                aggregate_type="account",
                aggregate_id=command.account_id,
                event_type="RequestTransfer",
                topic=settings.topic_prefix + COMMANDS,
                payload_json=encode_command(command).decode(),
            )
        ],
    )
    try:
        pending = idempotency.Pending(
            client.id,
            idempotency_key,
            idempotency.fingerprint(
                "POST", request.url.path, body.model_dump(mode="json", exclude_unset=True)
            ),
            effect,
        )
        (outcome,) = await idempotency.run_batch(  # one request, one transaction
            request.app.state.pool,
            [pending],
            retention_s=settings.idempotency_retention_s,
            timeout_s=settings.postgres_timeout_s,
        )
        if isinstance(outcome, Exception):
            raise outcome
        result = outcome
    except idempotency.KeyReusedForAnotherRequest:
        raise HTTPException(422, "this Idempotency-Key was used for a different request") from None
    except idempotency.RequestInFlight:
        raise HTTPException(409, headers={"Retry-After": "1"}) from None
    except _UNAVAILABLE:
        raise HTTPException(503, headers={"Retry-After": "2"}) from None
    headers = {"Location": f"/v1/transfers/{result.body['transfer_id']}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        orjson.dumps(result.body),
        status_code=result.status,
        media_type="application/json",
        headers=headers,
    )


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "pass"}
