"""`atlas` subcommands beside Faust's own (`atlas worker`, ...): migrations and database reset."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import click
import orjson
from faust.cli import AppCommand, argument, option

from streams import operations, relay
from streams.app import app
from streams.lag import LagTracker, OffsetsReader, source_topics
from streams.operations import LedgerTopics
from tables.errors import AtlasError
from web import migrate as migrations


async def connect() -> asyncpg.Connection:
    s = app.settings
    return await asyncpg.connect(
        s.database_url.get_secret_value(), timeout=s.postgres_timeout_s, command_timeout=60
    )


@app.command()
async def migrate(self: AppCommand) -> None:
    """Apply pending migrations in order (under an advisory lock)."""
    conn = await connect()
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
    conn = await connect()
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
    conn = await connect()
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        applied = await migrations.migrate(conn, app.settings.migrations_dir)
    finally:
        await conn.close()
    self.say(f"database reset; {len(applied)} migrations applied")


def _ledger_topics() -> LedgerTopics:
    s = app.settings
    return LedgerTopics(
        bootstrap=s.kafka_bootstrap_servers,
        group=app.conf.id,
        inputs=[
            t.get_topic_name()
            for t in (
                app.topics_.payments,
                app.topics_.commands,
                app.topics_.legs,
                app.topics_.transfer_events,
            )
        ],
        outcomes=app.topics_.outcomes.get_topic_name(),
        transfer_events=app.topics_.transfer_events.get_topic_name(),
        accounts_changelog=app.ledger_tables.accounts.changelog_topic.get_topic_name(),
    )


@app.command(
    option("--wait", type=float, default=0.0, help="Seconds to wait for consumer lag to reach 0.")
)
async def verify(self: AppCommand, wait: float) -> None:
    """Audit the ledger at rest: money conserved, no negative balance, one final status each."""
    report, _ = await operations.verify(_ledger_topics(), wait_s=wait)
    for line in report.lines():
        self.say(line)
    if not report.ok:
        raise SystemExit(1)


@app.command(
    argument("action", type=click.Choice(["replay"])),
    option("--error-type", default=None, help="Replay only dead letters of this error.type."),
)
async def dlq(self: AppCommand, action: str, error_type: str | None) -> None:
    """Dead letters: `atlas dlq replay [--error-type T]` re-injects them into their source topic."""
    replayed = await operations.replay_dead_letters(
        app.settings.kafka_bootstrap_servers,
        app.topics_.dlq.get_topic_name(),
        group=f"{app.conf.id}-dlq-replay",
        error_type=error_type,
    )
    total = sum(replayed.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(replayed.items()))
    self.say(f"replayed {total} dead letters" + (f" ({detail})" if detail else ""))


@app.command(
    option("--group", default=None, help="Consumer group; default the worker's own."),
    option(
        "--topic", "topics", multiple=True, help="Topic to report (repeatable); default inputs."
    ),
    option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    option("--samples", type=int, default=3, help="Readings taken for the status (>= 1)."),
    option("--interval", type=float, default=1.0, help="Seconds between readings."),
)
async def lag(
    self: AppCommand,
    group: str | None,
    topics: tuple[str, ...],
    as_json: bool,
    samples: int,
    interval: float,
) -> None:
    """Consumer lag per partition: committed and end offsets, lag, and Burrow status."""
    s = app.settings
    names = list(topics) or source_topics(s.topic_prefix)
    reader = OffsetsReader(s.kafka_bootstrap_servers, s.kafka_timeout_s * 5)
    tracker = LagTracker()
    try:
        for i in range(max(samples, 1)):
            if i:
                await asyncio.sleep(interval)
            report = tracker.observe(
                await reader.read(group or app.conf.id, names), time.monotonic()
            )
    finally:
        await reader.stop()
    if as_json:
        self.say(orjson.dumps(report.as_json()).decode())
        return
    header = ["topic", "partition", "committed", "end", "lag", "lag s", "status"]
    rows: list[list[Any]] = [
        [
            p.topic,
            p.partition,
            "-" if p.committed is None else p.committed,
            p.end,
            p.lag,
            f"{p.lag_seconds:.1f}",
            p.status,
        ]
        for p in report.partitions
    ]
    self.say(self.tabulate([header, *rows], headers=[]))
    self.say(f"group {report.group}: {report.status}, lag {report.total}")


@app.command(
    argument("action", type=click.Choice(["failed", "retry"])),
    argument("ids", nargs=-1),
    option("--all", "retry_all", is_flag=True, help="With retry: every set-aside row."),
)
async def outbox(self: AppCommand, action: str, ids: tuple[str, ...], retry_all: bool) -> None:
    """Set-aside outbox rows: `atlas outbox failed` lists them, `atlas outbox retry ID...|--all`
    gives them back to the relay (once the cause, say Kafka's size limit, is fixed)."""
    if action == "retry" and not (ids or retry_all):
        raise SystemExit("outbox retry: name the row ids, or --all")
    try:
        wanted = [uuid.UUID(i) for i in ids] if ids else None
    except ValueError as exc:
        raise SystemExit(f"outbox retry: not a row id: {exc}") from None
    conn = await connect()
    try:
        if action == "retry":
            given_back = await relay.retry_failed(conn, wanted)
            self.say(f"gave {len(given_back)} rows back to the relay")
            return
        rows = await relay.failed_rows(conn)
    finally:
        await conn.close()
    header = ["id", "failed", "event type", "aggregate", "topic", "bytes", "failure"]
    table = [
        [
            str(r["id"]),
            r["failed_at"].isoformat(timespec="seconds"),
            r["event_type"],
            r["aggregate_id"],
            r["topic"],
            r["payload_bytes"],
            r["failure"],
        ]
        for r in rows
    ]
    self.say(self.tabulate([header, *table], headers=[]))
    self.say(f"{len(rows)} rows set aside")
