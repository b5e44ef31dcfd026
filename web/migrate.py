"""Versioned SQL migrations: numbered files applied in order, checksummed, under an advisory lock.

A file that changed after it was applied stops the runner (and fails readiness): the schema in
the database would no longer be the one the files describe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tables.errors import MigrationChecksumMismatch, MigrationError

# Any fixed 64-bit number; every runner in the cluster takes the same lock.
_ADVISORY_LOCK_ID = 0x61746C61735F6D67  # "atlas_mg"
_FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationStatus:
    pending: list[Migration]
    changed: list[Migration]
    unknown: list[AppliedMigration]

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.changed or self.unknown)

    def problem(self) -> str | None:
        if self.changed:
            return "migrations changed after being applied: " + _names(self.changed)
        if self.unknown:
            return "applied migrations missing on disk: " + ", ".join(
                f"{m.version:04d}_{m.name}" for m in self.unknown
            )
        if self.pending:
            return "pending migrations: " + _names(self.pending)
        return None


def _names(migrations: list[Migration]) -> str:
    return ", ".join(m.path.name for m in migrations)


def discover(directory: Path) -> list[Migration]:
    """The migration files in `directory`, in version order; a malformed name is an error."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: expected NNNN_lower_snake_name.sql")
        found.append(Migration(int(match["version"]), match["name"], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def compare(files: list[Migration], applied: list[AppliedMigration]) -> MigrationStatus:
    """Pure comparison of what is on disk with what the database says it applied."""
    by_version = {a.version: a for a in applied}
    on_disk = {m.version for m in files}
    return MigrationStatus(
        pending=[m for m in files if m.version not in by_version],
        changed=[
            m
            for m in files
            if m.version in by_version and by_version[m.version].checksum != m.checksum
        ],
        unknown=[a for a in applied if a.version not in on_disk],
    )


def next_filename(directory: Path, message: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_") or "migration"
    versions = [m.version for m in discover(directory)]
    return f"{max(versions, default=0) + 1:04d}_{slug}.sql"


async def applied_migrations(conn: Conn) -> list[AppliedMigration]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return [AppliedMigration(**dict(r)) for r in rows]


async def status(conn: Conn, directory: Path) -> MigrationStatus:
    return compare(discover(directory), await applied_migrations(conn))


async def migrate(conn: Conn, directory: Path) -> list[Migration]:
    """Apply pending migrations in order, each in its own transaction; return what was applied.

    The advisory lock serialises concurrent runners (several workers starting at once); the
    status is read again after taking it, so a runner never applies what another just did.
    """
    files = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_ID)
    try:
        await conn.execute(_CREATE_HISTORY)
        current = compare(files, await applied_migrations(conn))
        if current.changed:
            raise MigrationChecksumMismatch(current.problem())
        for migration in current.pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        return current.pending
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_ID)
