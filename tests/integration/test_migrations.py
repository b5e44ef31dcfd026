"""The migration runner against a real PostgreSQL: order, checksums, the advisory lock, the CLI."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tables.errors import MigrationChecksumMismatch
from tests.integration.processes import REPO_ROOT, run_atlas
from web import migrate

pytestmark = pytest.mark.integration


async def run_migrate(url: str, directory: Path) -> list[str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [m.path.name for m in await migrate.migrate(conn, directory)]
    finally:
        await conn.close()


async def history(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [(a.version, a.checksum) for a in await migrate.applied_migrations(conn)]
    finally:
        await conn.close()


def project_migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    shutil.copytree(REPO_ROOT / "migrations", directory)
    return directory


def test_applies_in_order_once_and_refuses_a_changed_file(
    make_database: Callable[[bool], str], tmp_path: Path
) -> None:
    url = make_database(False)
    directory = project_migrations(tmp_path)
    (directory / "0900_extra.sql").write_text("CREATE TABLE extra (id int);")
    applied = asyncio.run(run_migrate(url, directory))
    assert applied == sorted(p.name for p in directory.glob("*.sql"))
    assert asyncio.run(run_migrate(url, directory)) == []

    (directory / "0900_extra.sql").write_text("CREATE TABLE extra (id bigint);")
    with pytest.raises(MigrationChecksumMismatch):
        asyncio.run(run_migrate(url, directory))


def test_concurrent_runners_apply_each_file_once(
    make_database: Callable[[bool], str], tmp_path: Path
) -> None:
    url = make_database(False)
    directory = project_migrations(tmp_path)

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*(run_migrate(url, directory) for _ in range(4))))

    results = asyncio.run(race())
    applied_by_someone = sorted(name for r in results for name in r)
    assert applied_by_someone == sorted(p.name for p in directory.glob("*.sql"))
    assert len(asyncio.run(history(url))) == len(applied_by_someone)


def test_cli_migrate_and_history(
    make_database: Callable[[bool], str], base_env: dict[str, str]
) -> None:
    url = make_database(False)
    env = {**base_env, "DATABASE_URL": url}

    def atlas(*args: str) -> subprocess.CompletedProcess[str]:
        return run_atlas(env, *args)

    before = atlas("migration-history")
    assert before.returncode == 1
    assert "pending" in before.stdout

    done = atlas("migrate")
    assert done.returncode == 0, done.stderr
    assert "applied 0001_initial_schema.sql" in done.stdout

    after = atlas("migration-history")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "applied" in after.stdout and "pending" not in after.stdout
