"""One pinned pool connection LISTENing on a PostgreSQL channel, for as long as it is started."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

Callback = Callable[[Any, int, str, object], None]  # asyncpg's (connection, pid, channel, payload)


class ChannelListener:
    def __init__(self, pool: asyncpg.Pool, channel: str, callback: Callback) -> None:
        self.pool = pool
        self.channel = channel
        self.callback = callback
        self._conn: Any = None

    async def start(self) -> None:
        if self._conn is not None:
            return
        conn = await self.pool.acquire()
        try:
            await conn.add_listener(self.channel, self.callback)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._conn = conn

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            await conn.remove_listener(self.channel, self.callback)
        await self.pool.release(conn)
