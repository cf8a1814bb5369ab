from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.storage.database import (
    MigrationError,
    connect_pool,
    load_migrations,
    migrate,
    resolve_database_url,
    with_database,
)
from shared.storage.embedded import EmbeddedPostgres


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(fresh_database, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def connects(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.mark.integration
async def test_session_server_accepts_connections(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        if not os.environ.get("DATABASE_URL"):
            # Several services' pools share the embedded server.
            assert int(await conn.fetchval("SHOW max_connections")) >= 200
    finally:
        await conn.close()


@pytest.mark.integration
async def test_embedded_shared_by_two_handles_stops_with_the_last() -> None:
    root = Path(tempfile.mkdtemp(prefix="x402-test-embedded-"))
    try:
        first = EmbeddedPostgres(root / "data")
        second = EmbeddedPostgres(root / "data")
        dsn = await asyncio.to_thread(first.start)
        assert await asyncio.to_thread(second.start) == dsn
        assert "host=" in dsn  # unix socket in the data folder; TCP is off

        await asyncio.to_thread(first.stop)
        assert await connects(dsn), "the second handle still needs the server"
        await asyncio.to_thread(second.stop)
        await asyncio.to_thread(second.stop)  # idempotent
        assert not await connects(dsn)

        with EmbeddedPostgres(root / "data") as again:  # restarts on the existing folder
            assert await connects(again.dsn)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_embedded_rejects_whitespace_in_path() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        EmbeddedPostgres(Path("/tmp/has space/data"))


def test_resolve_database_url_prefers_explicit(tmp_path: Path) -> None:
    assert resolve_database_url("postgresql://u:p@db/app", tmp_path) == ("postgresql://u:p@db/app", None)


def test_with_database_keeps_host_and_query() -> None:
    dsn = "postgresql://postgres@/postgres?host=/tmp/pg&port=5432"
    assert with_database(dsn, "test_1") == "postgresql://postgres@/test_1?host=/tmp/pg&port=5432"


def test_load_migrations_rejects_misnamed_and_duplicate(tmp_path: Path) -> None:
    write_migrations(tmp_path / "bad", {"0001_ok.sql": "", "2_oops.sql": ""})
    with pytest.raises(MigrationError, match="NNNN_name"):
        load_migrations(tmp_path / "bad")
    write_migrations(tmp_path / "dup", {"0001_a.sql": "", "0001_b.sql": ""})
    with pytest.raises(MigrationError, match="share version"):
        load_migrations(tmp_path / "dup")


@pytest.mark.integration
async def test_migrate_applies_each_file_once(pool: asyncpg.Pool, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            "0002_seed.sql": "INSERT INTO items (label) VALUES ('first') -- no semicolon, comment last",
            "0004_placeholder.sql": "-- reserved\n/* nothing yet */",
            "0001_items.sql": "CREATE TABLE items (id serial PRIMARY KEY, label text NOT NULL);",
            "README.txt": "not a migration",
        },
    )
    expected = ["0001_items.sql", "0002_seed.sql", "0004_placeholder.sql"]
    assert await migrate(pool, folder, namespace="svc") == expected
    assert await migrate(pool, folder, namespace="svc") == []

    # A version below the newest applied one still runs: each file is tracked on its own.
    write_migrations(folder, {"0003_more.sql": "INSERT INTO items (label) VALUES ('second');"})
    assert await migrate(pool, folder, namespace="svc") == ["0003_more.sql"]

    assert await pool.fetchval("SELECT count(*) FROM items") == 2
    rows = await pool.fetch("SELECT namespace, version, name FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in rows] == [
        ("svc", 1, "items"),
        ("svc", 2, "seed"),
        ("svc", 3, "more"),
        ("svc", 4, "placeholder"),
    ]


@pytest.mark.integration
async def test_migrate_reads_package_resources(pool: asyncpg.Pool, tmp_path: Path) -> None:
    # zipfile.Path is a Traversable that is not a file system path, like a zipped package.
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/migrations/0001_t.sql", "CREATE TABLE t (x int);")
    source = zipfile.Path(archive, "pkg/migrations/")
    assert await migrate(pool, source, namespace="zipped") == ["0001_t.sql"]


@pytest.mark.integration
async def test_namespaces_are_independent(pool: asyncpg.Pool, tmp_path: Path) -> None:
    a = write_migrations(tmp_path / "a", {"0001_a.sql": "CREATE TABLE a (x int);"})
    b = write_migrations(tmp_path / "b", {"0001_b.sql": "CREATE TABLE b (x int);"})
    assert await migrate(pool, a, namespace="a") == ["0001_a.sql"]
    assert await migrate(pool, b, namespace="b") == ["0001_b.sql"]


@pytest.mark.integration
async def test_concurrent_migrations_apply_each_file_once(fresh_database: str, tmp_path: Path) -> None:
    # Neither file is idempotent, and the sleep keeps the first replica inside the lock
    # while the others arrive.
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_create.sql": "SELECT pg_sleep(0.3); CREATE TABLE counter (n int NOT NULL);",
            "0002_insert.sql": "INSERT INTO counter VALUES (1);",
        },
    )
    pools = [await connect_pool(fresh_database, min_size=1, max_size=2) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p, folder, namespace="svc") for p in pools))
        applied = sorted(name for result in results for name in result)
        assert applied == ["0001_create.sql", "0002_insert.sql"]
        assert await pools[0].fetchval("SELECT count(*) FROM counter") == 1
        assert await pools[0].fetchval("SELECT count(*) FROM schema_migrations") == 2
    finally:
        await asyncio.gather(*(p.close() for p in pools))


@pytest.mark.integration
async def test_failed_migration_rolls_back_and_releases_lock(pool: asyncpg.Pool, tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE ok (x int);",
            "0002_broken.sql": "CREATE TABLE half (x int); SELECT no_such_function();",
        },
    )
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(pool, folder, namespace="svc")
    assert await pool.fetchval("SELECT to_regclass('half')") is None
    assert await pool.fetchval("SELECT count(*) FROM schema_migrations") == 1

    (folder / "0002_broken.sql").write_text("CREATE TABLE half (x int);")
    assert await migrate(pool, folder, namespace="svc") == ["0002_broken.sql"]


@pytest.mark.integration
async def test_renamed_applied_migration_is_refused(pool: asyncpg.Pool, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"0001_first.sql": "SELECT 1;"})
    await migrate(pool, folder, namespace="svc")
    (folder / "0001_first.sql").rename(folder / "0001_renamed.sql")
    with pytest.raises(MigrationError, match="was applied as"):
        await migrate(pool, folder, namespace="svc")


@pytest.mark.integration
async def test_json_and_jsonb_round_trip(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE docs (id int PRIMARY KEY, body jsonb NOT NULL, raw json)")
    body = {"amount": "1000", "nested": {"ok": True, "list": [1, 2.5, None, "x"]}, "unicode": "é€"}
    await pool.execute("INSERT INTO docs VALUES (1, $1, $2)", body, [1, {"a": 2}])
    row = await pool.fetchrow("SELECT body, raw FROM docs WHERE id = 1")
    assert row is not None
    assert row["body"] == body
    assert row["raw"] == [1, {"a": 2}]
    # Containment works because the value really is stored as jsonb, not as a string.
    assert await pool.fetchval("SELECT body @> $1 FROM docs", {"nested": {"ok": True}}) is True
