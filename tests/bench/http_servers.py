"""The HTTP write benchmark's servers and its database.

`BenchDatabase` is a fresh PostgreSQL database on the stack's server, migrated by `atlas migrate`
and given an API client by `atlas clients-create`, dropped at the end. `Server` says how to start
each of the three servers measured and when it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from streams.relay import RELAY_LOCK_ID
from tests.bench.procs import BenchTimeout, Measured, wait_http_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
ATLAS = str(Path(sys.executable).with_name("atlas"))
# High enough that Atlas's per-client limiter never refuses a benchmark request.
UNLIMITED_RATE = "1000000"
# Out of reach of any run: with the relay held, every accepted write stays unpublished.
UNLIMITED_BACKLOG = "100000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """This process's environment without any ATLAS_* setting a developer may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}


async def run_command(argv: list[str], env: dict[str, str], timeout_s: float = 120) -> str:
    """Run a short command in its own process group; its output, or RuntimeError on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise BenchTimeout(f"{' '.join(argv[:2])} still running after {timeout_s:.0f}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} exited with {proc.returncode}:\n{text[-2000:]}")
    return text


# ---- the database ------------------------------------------------------------------------------


@dataclass
class BenchDatabase:
    admin_url: str  # the stack's database; the bench database is created beside it
    name: str = field(default_factory=lambda: f"atlas_bench_{uuid.uuid4().hex[:10]}")
    client_id: uuid.UUID | None = None
    api_key: str = ""

    @property
    def url(self) -> str:
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{self.name}"))

    async def create(self) -> None:
        """Create, migrate with `atlas migrate`, and add a client with `atlas clients-create`."""
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        env = {**base_env(), "DATABASE_URL": self.url, "ATLAS_LOG_LEVEL": "WARNING"}
        await run_command([ATLAS, "migrate"], env)
        created = await run_command([ATLAS, "clients-create", f"bench-{self.name}"], env)
        fields = dict(
            line.split(":", 1) for line in created.splitlines() if line.startswith(("id:", "key:"))
        )
        self.client_id = uuid.UUID(fields["id"].strip())
        self.api_key = fields["key"].strip()

    async def empty_write_tables(self) -> None:
        """Truncate the outbox and the idempotency keys: each server starts from empty tables."""
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute("TRUNCATE outbox, idempotency_keys")
        finally:
            await conn.close()

    async def checkpoint(self) -> bool:
        """CHECKPOINT now, so that none lands inside the next measured row (the stack grants
        pg_checkpoint); False when the role may not."""
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute("CHECKPOINT", timeout=120)
            return True
        except asyncpg.InsufficientPrivilegeError:
            return False
        finally:
            await conn.close()

    async def accepted_in_outbox(self, key_prefix: str) -> tuple[int, int]:
        """Of the keys starting with `key_prefix`: (completed keys, outbox rows they wrote)."""
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            row = await conn.fetchrow(
                """
                SELECT count(*) AS keys, count(o.id) AS outbox_rows
                FROM idempotency_keys k
                LEFT JOIN outbox o ON o.payload->>'transfer_id' = k.resource_id
                WHERE k.client_id = $1 AND k.state = 'completed'
                  AND starts_with(k.idempotency_key, $2)
                """,
                self.client_id,
                key_prefix,
                timeout=120,
            )
        finally:
            await conn.close()
        assert row is not None
        return int(row["keys"]), int(row["outbox_rows"])

    @contextlib.asynccontextmanager
    async def relay_lock_held(self) -> AsyncIterator[None]:
        """Hold the relay's advisory lock: a worker started inside stands by as a relay."""
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_ID)
            yield
        finally:
            await conn.close()  # the lock goes with the session

    async def unpublished(self) -> int:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            n = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        finally:
            await conn.close()
        return int(n)

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


# ---- the servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    kind: str  # bare, fastapi, atlas
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    ready_timeout_s: float
    keyed: bool  # idempotency keys are stored: the outbox can be checked against the 2xx count
    # The bench holds the relay's lock while it measures: nothing is published, so the worker's
    # relay and agents stand idle and the write path is measured alone.
    relay_held: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def bare_server(database_url: str) -> Server:
    port = free_port()
    return Server(
        kind="bare",
        name="bare aiohttp",
        argv=[sys.executable, "-m", "tests.bench.http_bare", "--port", str(port)],
        env={**base_env(), "DATABASE_URL": database_url},
        port=port,
        ready_path="/health",
        ready_timeout_s=30,
        keyed=False,
    )


def fastapi_server(database_url: str) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.bench.http_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with contextlib.suppress(ImportError):  # uvicorn[standard] brings both
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        argv += ["--loop", "uvloop", "--http", "httptools"]
    return Server(
        kind="fastapi",
        name="fastapi+uvicorn",
        argv=argv,
        env={**base_env(), "DATABASE_URL": database_url},
        port=port,
        ready_path="/health",
        ready_timeout_s=30,
        keyed=True,
    )


def atlas_server(
    database_url: str,
    *,
    kafka: str,
    redis_url: str,
    run_id: str,
    data_dir: Path,
    relay_held: bool = False,
) -> Server:
    """`atlas worker` (the Procfile's command) with a topic namespace and group of its own.

    With `relay_held` the bench keeps the relay's lock, so nothing reaches the agents while it
    measures, and the backlog limit is set out of reach as the rate limit is.
    """
    port = free_port()
    name = f"{run_id}-atlas{'-write' if relay_held else ''}"
    env = {
        **base_env(),
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ATLAS_APP_NAME": name,
        "ATLAS_TOPIC_PREFIX": f"{name}.",
        "ATLAS_WEB_BIND": "127.0.0.1",
        "ATLAS_WEB_HOST": "127.0.0.1",
        "ATLAS_WEB_PORT": str(port),
        "ATLAS_DATA_DIR": str(data_dir),
        "ATLAS_LOG_LEVEL": "WARNING",
        "ATLAS_RATE_LIMIT_PER_S": UNLIMITED_RATE,
        "ATLAS_RATE_LIMIT_BURST": UNLIMITED_RATE,
    }
    if relay_held:
        env["ATLAS_OUTBOX_BACKLOG_LIMIT"] = UNLIMITED_BACKLOG
    return Server(
        kind="atlas-write" if relay_held else "atlas",
        name="atlas, relay held" if relay_held else "atlas worker",
        argv=[ATLAS, "worker"],
        env=env,
        port=port,
        ready_path="/health/ready",
        ready_timeout_s=180,
        keyed=True,
        relay_held=relay_held,
    )


async def wait_ready(server: Server, proc: Measured) -> float:
    """Seconds until the server's readiness path answered 200."""
    return await wait_http_ready(
        server.name, server.url + server.ready_path, proc, server.ready_timeout_s
    )


async def settle(proc: Measured, *, idle_share: float = 0.1, limit_s: float = 60) -> bool:
    """Wait until the server uses under `idle_share` of a core for a second (its relay and
    agents catch up after a run); False if it did not within `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        a = proc.snapshot()
        await asyncio.sleep(1.0)
        b = proc.snapshot()
        if a is None or b is None:
            return False
        if b.wall > a.wall and (b.cpu_s - a.cpu_s) / (b.wall - a.wall) < idle_share:
            return True
    return False
