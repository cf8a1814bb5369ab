"""Applying the generation tables (migration namespace "generation")."""

from __future__ import annotations

import importlib.resources

import asyncpg

from shared.storage.database import migrate

NAMESPACE = "generation"


async def migrate_schema(pool: asyncpg.Pool) -> list[str]:
    return await migrate(
        pool, importlib.resources.files("resource_server.generation.migrations"), namespace=NAMESPACE
    )
