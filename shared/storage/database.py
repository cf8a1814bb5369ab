"""Connection pools and ordered SQL migrations on PostgreSQL (asyncpg)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from shared.storage.embedded import EmbeddedPostgres

_logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

# One key for every namespace: creating schema_migrations itself must be serialised too,
# and migrations are rare enough that services waiting on each other costs nothing.
# The bytes spell "x402migr" so the lock is recognisable in pg_locks.
_LOCK_KEY = int.from_bytes(b"x402migr", "big", signed=True)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    namespace  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, version)
)
"""


class MigrationError(RuntimeError):
    """The migration files disagree with each other or with what the database recorded."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def encode_json(value: Any) -> str:
    """JSON text as the pool's codec sends it; for jsonb arrays, whose nested lists asyncpg would otherwise
    take for array dimensions (pass text[] and cast each element)."""
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Without codecs asyncpg exchanges json/jsonb as str; with them dicts and lists round-trip.
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=encode_json, decoder=orjson.loads, format="text"
        )


async def _no_reset(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset (unlock advisory locks, CLOSE ALL, UNLISTEN *, RESET ALL) is a round trip on
    # every release. Nothing here leaves session state behind: transactions are context-managed, the
    # migration lock is released explicitly, and the LISTEN hub removes its listener before releasing.
    return None


async def connect_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb into Python values."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset
    )


def load_migrations(source: Traversable | Path) -> list[Migration]:
    """Read ``NNNN_name.sql`` files from a folder or package resource, ordered by version."""
    found: dict[int, Migration] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_FILE.match(entry.name)
        if match is None:
            # A misnamed file would silently never run; fail loudly instead.
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}: {entry.name}")
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(pool: asyncpg.Pool, migrations: Traversable | Path, *, namespace: str) -> list[str]:
    """Apply pending migrations of ``namespace`` once each; returns the file names applied now.

    A session advisory lock makes replicas that start together take turns, and the
    applied set is read only after the lock is held, so each file runs exactly once.
    Each file runs in its own transaction with its schema_migrations row, so a failure
    leaves earlier files applied and this one not; files must therefore not contain
    BEGIN/COMMIT or statements that refuse transactions (CREATE INDEX CONCURRENTLY).
    Needs a session-level connection: not through a transaction-pooling proxy.
    Files are tracked one by one, so a file numbered below ones already applied (from a
    merged branch) still runs.
    """
    pending = load_migrations(migrations)
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch(
                "SELECT version, name FROM schema_migrations WHERE namespace = $1", namespace
            )
            recorded: dict[int, str] = {row["version"]: row["name"] for row in rows}
            for migration in pending:
                if migration.version in recorded:
                    if recorded[migration.version] != migration.name:
                        raise MigrationError(
                            f"{namespace}: version {migration.version:04d} was applied as "
                            f"{recorded[migration.version]!r}, the file now says {migration.name!r}"
                        )
                    continue
                async with conn.transaction():
                    # asyncpg fails on a script with no statement at all (a placeholder
                    # file of comments); the trailing SELECT guarantees one. The newline
                    # ends a final "--" comment first.
                    await conn.execute(f"{migration.sql}\n;SELECT 1")
                    await conn.execute(
                        "INSERT INTO schema_migrations (namespace, version, name) VALUES ($1, $2, $3)",
                        namespace,
                        migration.version,
                        migration.name,
                    )
                _logger.info("applied migration %s/%s", namespace, migration.filename)
                applied_now.append(migration.filename)
        finally:
            # A dead connection has already dropped the lock; unlocking it would only mask
            # the original error.
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


def resolve_database_url(explicit: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """Use ``explicit`` (DATABASE_URL) if given, else start an embedded server in ``data_dir``.

    The caller owns the returned EmbeddedPostgres and must ``stop()`` it. Starting blocks
    (initdb, pg_ctl): from async code run this through ``asyncio.to_thread``.
    """
    if explicit:
        return explicit, None
    embedded = EmbeddedPostgres(data_dir)
    return embedded.start(), embedded


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database (keeps host, user and query)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def quote_ident(identifier: str) -> str:
    """Quote an SQL identifier for statements that take no parameters (CREATE DATABASE)."""
    return '"' + identifier.replace('"', '""') + '"'
