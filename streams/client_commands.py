"""`atlas clients-*`: create, revoke and list API clients.

A key is printed once, by `clients-create`; PostgreSQL keeps only its hash, so a lost key is
replaced by a new client, never recovered.
"""

from __future__ import annotations

from datetime import datetime

from faust.cli import AppCommand, argument

from streams.app import app
from streams.commands import connect
from web import auth


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else ""


@app.command(argument("name"))
async def clients_create(self: AppCommand, name: str) -> None:
    """Create an API client and print its key (shown this once, stored only as a hash)."""
    conn = await connect()
    try:
        client_id, key = await auth.create_client(conn, name)
    except (auth.ClientNameTaken, auth.InvalidClientName) as exc:
        raise SystemExit(f"clients-create: {exc}") from None
    finally:
        await conn.close()
    self.say(f"name:   {name}")
    self.say(f"id:     {client_id}")
    self.say(f"prefix: {auth.key_prefix(key)}")
    self.say(f"key:    {key}")
    self.say("Store the key now: it is not shown again and cannot be recovered.")


@app.command(argument("name"))
async def clients_revoke(self: AppCommand, name: str) -> None:
    """Revoke an API client: its key stops working on every worker within the cache TTL."""
    conn = await connect()
    try:
        client = await auth.revoke_client(conn, name)
    except auth.UnknownClient as exc:
        raise SystemExit(f"clients-revoke: {exc}") from None
    finally:
        await conn.close()
    self.say(f"revoked {client.name} ({client.id}) at {_when(client.revoked_at)}")


@app.command()
async def clients_list(self: AppCommand) -> None:
    """List API clients: id, name, key prefix, created and revoked times (never keys)."""
    conn = await connect()
    try:
        clients = await auth.list_clients(conn)
    finally:
        await conn.close()
    rows = [
        [c.name, str(c.id), c.key_prefix, _when(c.created_at), _when(c.revoked_at)] for c in clients
    ]
    header = ["name", "id", "prefix", "created", "revoked"]
    self.say(self.tabulate([header, *rows], headers=[]))
