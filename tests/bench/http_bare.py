"""Peer (a) of the HTTP write benchmark: the least a durable write can cost in aiohttp.

    DATABASE_URL=... python -m tests.bench.http_bare --port PORT

`POST /v1/transfers` parses the body with orjson, INSERTs it as one outbox row (autocommit,
one statement) and answers 202. No authentication, validation, idempotency or transaction:
the floor that Atlas's write path is compared with. `GET /health` answers 200 once the pool
is open. The pool has Atlas's default size (ATLAS_POSTGRES_POOL_MAX).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web

from streams.settings import Settings

POOL = web.AppKey("pool", asyncpg.Pool)
INSERT = """
    INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload)
    VALUES ($1, 'account', $2, 'RequestTransfer', 'bench.bare', $3::jsonb)
"""


async def accept_transfer(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
        account_id = str(body["from_account"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return web.Response(status=400, text="a JSON object with from_account, please")
    transfer_id = uuid.uuid4()
    await request.app[POOL].execute(INSERT, transfer_id, account_id, raw.decode())
    return web.Response(
        status=202,
        body=orjson.dumps({"transfer_id": str(transfer_id), "status": "pending"}),
        content_type="application/json",
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "pass"})


def make_app(database_url: str, pool_max: int) -> web.Application:
    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=pool_max) as pool:
            app[POOL] = pool
            yield

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/v1/transfers", accept_transfer)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings()  # DATABASE_URL and the pool size, as Atlas reads them
    app = make_app(settings.database_url.get_secret_value(), settings.postgres_pool_max)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
