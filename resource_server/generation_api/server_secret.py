"""The generation API's server secret: configured, or generated once and kept in the database so every
replica signs job tokens and links alike."""

from __future__ import annotations

import secrets

import asyncpg
from pydantic import SecretStr


async def server_secret(pool: asyncpg.Pool, configured: SecretStr | None) -> bytes:
    if configured is not None:
        return configured.get_secret_value().encode()
    # Replicas starting together may both generate one; the first insert wins and both read it back.
    await pool.execute(
        "INSERT INTO generation_api_secret (id, value) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        secrets.token_bytes(32),
    )
    value = await pool.fetchval("SELECT value FROM generation_api_secret WHERE id = 1")
    return bytes(value)
