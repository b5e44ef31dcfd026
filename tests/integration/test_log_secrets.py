"""No secret reaches a real worker's log: not its database or Redis password, not an API key.

The worker runs at DEBUG (the chattiest level) with a password in its Redis URL (Redis's
default user takes any password while it has none), its database URL, and requests that send
API keys, good and bad, as `Authorization: Bearer`. One request is malformed: aiohttp logs the
offending header line, raw, in its error (the key and a database URL in it must come out
masked). Then the whole log file is searched.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.integration.processes import WorkerProcess, http, wait_until
from tests.integration.stack import Stack
from tests.integration.test_tracing import post
from tests.integration.test_writes import authed_get, fresh_client

pytestmark = pytest.mark.integration
Spawn = Callable[..., WorkerProcess]


def with_password(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def _own_role(database_url: str) -> tuple[str, str] | None:
    """A login role with a random password owning nothing but rights on the test database.

    Only where the stack's user may create roles (a throwaway container); else None.
    """
    user, password = f"atlas_secret_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    except asyncpg.InsufficientPrivilegeError:
        return None
    try:
        for sql in (
            f"GRANT USAGE ON SCHEMA public TO {user}",
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {user}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {user}",
        ):
            await conn.execute(sql)
    finally:
        await conn.close()
    return user, password


def malformed_request(worker: WorkerProcess, header: bytes) -> bytes:
    """A request whose last header has a control character: aiohttp refuses it with 400."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(b"GET /v1/accounts/x HTTP/1.1\r\nHost: atlas\r\n" + header + b"\x01\r\n\r\n")
        return s.recv(200)


def test_secrets_never_reach_the_log(
    spawn_worker: Spawn,
    api_key: str,
    stack: Stack,
    make_database: Callable[[bool], str],
) -> None:
    db_url = make_database(True)
    role = asyncio.run(_own_role(db_url))
    if role is not None:
        db_url = with_password(db_url, *role)
    db_password = urlsplit(db_url).password or ""
    # The API client lives in the session database; this worker needs one in its own.
    key = asyncio.run(fresh_client(db_url))
    redis_password = "redis-" + secrets.token_urlsafe(18)
    redis_url = with_password(stack.redis_url, "default", redis_password)
    wrong_key = "atl_" + secrets.token_urlsafe(32)

    worker = spawn_worker(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        ATLAS_LOG_LEVEL="DEBUG",
        ATLAS_TRACE_EXPORTER="console",  # spans on stdout, which goes to the same file
    )
    worker.api_key = key
    worker.wait_ready()
    body = {"owner_email": "s@example.com", "currency": "EUR"}
    r = post(worker, "/v1/accounts", body, key, "secret-1", extra={"X-Api-Key": key})
    assert r.status == 202, r.body
    account = r.json()["account_id"]
    wait_until(
        lambda: authed_get(worker, f"/v1/accounts/{account}", key).status == 200,
        30,
        what="account opened",
    )
    assert authed_get(worker, f"/v1/accounts/{account}", wrong_key).status == 401
    assert http("GET", worker.url + "/v1/accounts/x", headers={"Authorization": key}).status == 401
    assert worker.get("/health").status in (200, 503)
    assert malformed_request(worker, b"Authorization: Bearer " + key.encode()).startswith(
        b"HTTP/1.0 400"
    )
    malformed_request(worker, b"X-Upstream: " + db_url.encode())
    worker.stop()

    text = worker.log_path.read_text(errors="replace")
    assert '"event": "http request"' in text  # the log is there, and structured
    errors = [r for r in worker.log_records() if r.get("logger") == "aiohttp.server"]
    assert len(errors) == 2, errors  # logged, with the secrets masked
    assert "Bearer ***" in str(errors[0]["exception"]), errors[0]
    assert ":***@" in str(errors[1]["exception"]), errors[1]
    leaked = {
        name: secret
        for name, secret in {
            "api key": key,
            "wrong api key": wrong_key,
            "redis password": redis_password,
            "database url": db_url,
            "database credentials": urlsplit(db_url).netloc.rsplit("@", 1)[0],
        }.items()
        if secret in text
    }
    if role is not None and db_password in text:  # its own password, not a common word
        leaked["database password"] = db_password
    assert not leaked, f"secrets in the worker log: {sorted(leaked)}"
    assert api_key not in text
