"""API-client authentication: keys, their rows in `api_clients`, a cached lookup, the middleware.

A key is `atl_` + 32 random bytes (urlsafe base64). Only its SHA-256 hash is stored, beside a
short non-secret prefix that lets operators tell keys apart. Requests under `/v1/` carry the key
as `Authorization: Bearer <key>`; every other path (health, metrics, API docs, ops) stays open.

Revocation is eventually consistent per worker: each worker caches lookups for `ttl_s` (30 s by
default), so a revoked client keeps working on a worker for at most that long.

No key is ever logged: only the client's id and name, once the key has been matched.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from streams.logs import get_logger
from streams.resilience import BreakerOpen, Breakers
from tables.errors import AtlasError, DependencyUnavailable
from web.middleware import route_template
from web.problems import problem_response

KEY_SCHEME = "atl_"
PREFIX_LENGTH = 8
PROTECTED_PATHS = "/v1/"
_SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters of the urlsafe alphabet, without padding.
_KEY_SHAPE = re.compile(r"atl_[A-Za-z0-9_-]{43}")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")

_REALM = 'Bearer realm="atlas"'
_INVALID_TOKEN = 'Bearer realm="atlas", error="invalid_token"'

log = get_logger("atlas.auth")


class ClientNameTaken(AtlasError):
    """An API client with this name already exists."""


class UnknownClient(AtlasError):
    """No API client has this name."""


class InvalidClientName(AtlasError):
    """A client name must be 1-100 characters: letters, digits and `._:@-`."""


@dataclass(frozen=True, slots=True)
class ApiClient:
    """The authenticated caller, as handlers see it."""

    id: uuid.UUID
    name: str
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class ClientListing:
    """What operators may see of a client: never its key, nor its hash."""

    id: uuid.UUID
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


CLIENT = web.RequestKey("api_client", ApiClient)

# ---------------------------------------------------------------------------------------------
# Keys


def new_key() -> tuple[str, str, bytes]:
    """A fresh key, its non-secret prefix (8 characters after `atl_`) and its hash."""
    key = KEY_SCHEME + secrets.token_urlsafe(_SECRET_BYTES)
    return key, key_prefix(key), hash_key(key)


def key_prefix(key: str) -> str:
    """The part operators may see: 8 of the 43 random characters, leaving ~208 bits secret."""
    return key.removeprefix(KEY_SCHEME)[:PREFIX_LENGTH]


def hash_key(key: str) -> bytes:
    """SHA-256 of the key: what `api_clients.key_hash` holds.

    A fast, unsalted hash is right for these keys: they carry 256 random bits, so no guess-and-
    hash attack is feasible however fast the hash. Slow salted hashes (bcrypt, argon2) exist for
    low-entropy passwords, and a salt would make the indexed lookup by hash impossible. Looking
    the row up by hash also needs no constant-time compare: a caller cannot steer the hash.
    """
    return hashlib.sha256(key.encode("utf-8")).digest()


def looks_like_key(value: str) -> bool:
    return _KEY_SHAPE.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------
# Administration (the `atlas clients-*` commands)

_INSERT = """
    INSERT INTO api_clients (name, key_prefix, key_hash) VALUES ($1, $2, $3) RETURNING id
"""
_REVOKE = """
    UPDATE api_clients SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1
    RETURNING id, name, revoked_at
"""


async def create_client(conn: asyncpg.Connection, name: str) -> tuple[uuid.UUID, str]:
    """Insert a client; return its id and its key, which exists nowhere else afterwards."""
    if _CLIENT_NAME.fullmatch(name) is None:
        raise InvalidClientName(f"invalid client name {name!r}: {InvalidClientName.__doc__}")
    key, prefix, digest = new_key()
    try:
        client_id: uuid.UUID = await conn.fetchval(_INSERT, name, prefix, digest)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "api_clients_name_key":
            raise ClientNameTaken(f"a client named {name!r} already exists") from None
        raise
    return client_id, key


async def revoke_client(conn: asyncpg.Connection, name: str) -> ApiClient:
    """Revoke a client for good; revoking it again keeps the first revocation time."""
    row = await conn.fetchrow(_REVOKE, name)
    if row is None:
        raise UnknownClient(f"no client named {name!r}")
    return ApiClient(row["id"], row["name"], row["revoked_at"])


async def list_clients(conn: asyncpg.Connection) -> list[ClientListing]:
    rows = await conn.fetch(
        "SELECT id, name, key_prefix, created_at, revoked_at FROM api_clients ORDER BY name"
    )
    return [
        ClientListing(r["id"], r["name"], r["key_prefix"], r["created_at"], r["revoked_at"])
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------
# Lookup

Lookup = Callable[[str], Awaitable[ApiClient | None]]
"""Key -> client (revoked or not), None when unknown; raises DependencyUnavailable."""

PoolSource = Callable[[], "asyncpg.Pool | None"]

_LOOKUP = "SELECT id, name, revoked_at FROM api_clients WHERE key_hash = $1"
_DATABASE_FAILURES = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    client: ApiClient | None


class ClientStore:
    """Finds clients by key in PostgreSQL, through a small per-worker TTL cache.

    Entries live `ttl_s` seconds, so a revocation (or a new client that was looked up before it
    existed) takes effect on each worker within `ttl_s`. Known and unknown keys are cached apart,
    each bounded by `max_entries`, so a caller spraying random keys cannot evict real clients.
    Entries are keyed by the key's hash: the cache holds no usable secret.

    Every query is bounded by `timeout_s` (pool acquire included); a PostgreSQL failure raises
    DependencyUnavailable and is never cached, nor answered from an expired entry: a stale entry
    could be a revoked client.
    """

    def __init__(
        self,
        pool: PoolSource,
        *,
        timeout_s: float,
        ttl_s: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        breakers: Breakers | None = None,
    ) -> None:
        self._pool = pool
        self._breakers = breakers or Breakers()
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._known: OrderedDict[bytes, _Entry] = OrderedDict()
        self._unknown: OrderedDict[bytes, _Entry] = OrderedDict()

    async def lookup(self, key: str) -> ApiClient | None:
        digest = hash_key(key)
        now = self._clock()
        for cache in (self._known, self._unknown):
            entry = cache.get(digest)
            if entry is not None and entry.expires > now:
                return entry.client
        # Expiry counts from before the query, so an entry never outlives ttl_s of real time.
        client = await self._fetch(digest)
        self._remember(digest, _Entry(now + self._ttl_s, client), now)
        return client

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    async def _fetch(self, digest: bytes) -> ApiClient | None:
        pool = self._pool()
        if pool is None:
            raise DependencyUnavailable("PostgreSQL pool not started")

        async def query() -> Any:
            async with asyncio.timeout(self._timeout_s):
                return await pool.fetchrow(_LOOKUP, digest)

        try:
            row = await self._breakers.call("postgres", query)
        except BreakerOpen as exc:
            raise DependencyUnavailable(str(exc)) from exc
        except _DATABASE_FAILURES as exc:
            raise DependencyUnavailable(f"client lookup failed: {type(exc).__name__}") from exc
        if row is None:
            return None
        return ApiClient(row["id"], row["name"], row["revoked_at"])

    def _remember(self, digest: bytes, entry: _Entry, now: float) -> None:
        cache = self._known if entry.client is not None else self._unknown
        cache.pop(digest, None)
        cache[digest] = entry
        # One TTL for all, so insertion order is expiry order: drop the expired from the front,
        # then the oldest while over the bound.
        while cache and next(iter(cache.values())).expires <= now:
            cache.popitem(last=False)
        while len(cache) > self._max_entries:
            cache.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# Middleware


def requires_auth(request: web.Request) -> bool:
    # The matched route is checked too, so no spelling of a path reaches a /v1/ handler unasked.
    return request.path.startswith(PROTECTED_PATHS) or route_template(request).startswith(
        PROTECTED_PATHS
    )


def auth_middleware(lookup: Lookup, *, retry_after_s: int = 1) -> Middleware:
    """Bearer-key authentication for `/v1/`; sits inside the edge middleware.

    On success the client is on the request under `CLIENT` and `client_id` is bound in the
    structlog context for the rest of the request.
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not requires_auth(request):
            return await handler(request)
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return _unauthenticated(
                request, _REALM, "Send an API key as `Authorization: Bearer <key>`."
            )
        key = credentials.strip()
        if not looks_like_key(key):
            return _unauthenticated(request, _INVALID_TOKEN, "The API key is not valid.")
        try:
            client = await lookup(key)
        except (DependencyUnavailable, *_DATABASE_FAILURES) as exc:
            log.warning("api client lookup failed", error=type(exc).__name__, reason=str(exc))
            return problem_response(
                503,
                slug="unavailable",
                detail="Authentication is unavailable for now; retry later.",
                instance=request.path,
                headers={hdrs.RETRY_AFTER: str(retry_after_s)},
            )
        if client is None:
            return _unauthenticated(request, _INVALID_TOKEN, "The API key is not valid.")
        if client.revoked:
            log.info("revoked api client refused", client_id=str(client.id), client=client.name)
            return problem_response(
                403,
                slug="forbidden",
                detail="This API client has been revoked.",
                instance=request.path,
            )
        request[CLIENT] = client
        bound = structlog.contextvars.bind_contextvars(client_id=str(client.id))
        try:
            return await handler(request)
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    return authenticate


def _unauthenticated(request: web.Request, challenge: str, detail: str) -> web.Response:
    return problem_response(
        401,
        slug="unauthenticated",
        detail=detail,
        instance=request.path,
        headers={hdrs.WWW_AUTHENTICATE: challenge},
    )
