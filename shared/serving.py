"""Serving an ASGI app on uvicorn with its database: `DATABASE_URL`, or an embedded PostgreSQL that is
stopped however the server stops (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from shared.storage.database import resolve_database_url


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve_with_database(
    build_app: Callable[[str], ASGIApp], *, database_url: str | None, data_dir: Path, host: str, port: int
) -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down; SIGTERM's default action would
    # then kill the process before the `finally` below stops the embedded database.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    dsn, embedded = resolve_database_url(database_url, data_dir / "postgres")
    try:
        uvicorn.run(
            build_app(dsn), host=host, port=port, log_level="warning", access_log=False, log_config=None
        )
    finally:
        if embedded is not None:
            embedded.stop()
