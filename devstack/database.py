"""The stack's database on the embedded PostgreSQL server."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.storage.database import quote_ident, with_database

DATABASE_NAME = "x402_dev"


def recreate_database(server_dsn: str, name: str = DATABASE_NAME) -> str:
    """Drop and create `name`; returns its DSN. Anvil starts from genesis on every run, so a ledger kept
    from an earlier run would describe transactions that no longer exist (and its pending rows would be
    re-sent by the reconciler)."""
    asyncio.run(_recreate(server_dsn, name))
    return with_database(server_dsn, name)


async def _recreate(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        # FORCE: a facilitator killed without cleanup may still hold connections.
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
