"""`atlas` subcommands beside Faust's own (`atlas worker`, ...): migrations and database reset."""

from __future__ import annotations

from typing import Any

import asyncpg
from faust.cli import AppCommand, argument, option

from streams.app import app
from tables.errors import AtlasError
from web import migrate as migrations


async def _connect() -> asyncpg.Connection:
    s = app.settings
    return await asyncpg.connect(
        s.database_url.get_secret_value(), timeout=s.postgres_timeout_s, command_timeout=60
    )


@app.command()
async def migrate(self: AppCommand) -> None:
    """Apply pending migrations in order (under an advisory lock)."""
    conn = await _connect()
    try:
        applied = await migrations.migrate(conn, app.settings.migrations_dir)
    except AtlasError as exc:
        raise SystemExit(f"migrate: {exc}") from exc
    finally:
        await conn.close()
    for m in applied:
        self.say(f"applied {m.path.name}")
    self.say(f"schema up to date ({len(applied)} applied now)")


@app.command()
async def migration_history(self: AppCommand) -> None:
    """List migrations with their state: applied, pending or changed."""
    conn = await _connect()
    try:
        applied = {a.version: a for a in await migrations.applied_migrations(conn)}
        state = await migrations.status(conn, app.settings.migrations_dir)
    finally:
        await conn.close()
    changed = {m.version for m in state.changed}
    rows: list[list[Any]] = []
    for m in migrations.discover(app.settings.migrations_dir):
        done = applied.get(m.version)
        label = "changed" if m.version in changed else "applied" if done else "pending"
        when = done.applied_at.isoformat(timespec="seconds") if done else ""
        rows.append([f"{m.version:04d}", m.name, label, when])
    rows += [[f"{a.version:04d}", a.name, "missing on disk", ""] for a in state.unknown]
    self.say(self.tabulate([["version", "name", "state", "applied at"], *rows], headers=[]))
    if not state.up_to_date:
        raise SystemExit(1)


@app.command(argument("message"))
async def migration_new(self: AppCommand, message: str) -> None:
    """Create the next numbered migration file."""
    directory = app.settings.migrations_dir
    path = directory / migrations.next_filename(directory, message)
    path.write_text(f"-- {message}\n", encoding="utf-8")
    self.say(str(path))


@app.command(option("--yes", is_flag=True, help="Confirm dropping every table."))
async def db_reset(self: AppCommand, yes: bool) -> None:
    """Drop and recreate the public schema, then apply every migration (not in production)."""
    if app.settings.environment == "production":
        raise SystemExit("db-reset: refused in production")
    if not yes:
        raise SystemExit("db-reset: drops every table; pass --yes to confirm")
    conn = await _connect()
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        applied = await migrations.migrate(conn, app.settings.migrations_dir)
    finally:
        await conn.close()
    self.say(f"database reset; {len(applied)} migrations applied")
