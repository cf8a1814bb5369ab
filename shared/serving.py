"""Serving an ASGI app on uvicorn with its database: `DATABASE_URL`, or an embedded PostgreSQL that is
stopped however the server stops (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from shared.storage.database import resolve_database_url


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve_with_database(
    build_app: Callable[[str], ASGIApp],
    *,
    database_url: str | None,
    data_dir: Path,
    host: str,
    port: int,
    workers: int = 1,
    factory: str | None = None,
) -> None:
    """With `workers` > 1, `factory` ("module:function") builds the app in each worker process from the
    environment; the database (embedded or not) is resolved once here and handed down as DATABASE_URL."""
    # uvicorn re-raises the signal that stopped it once it has shut down; SIGTERM's default action would
    # then kill the process before the `finally` below stops the embedded database.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    dsn, embedded = resolve_database_url(database_url, data_dir / "postgres")
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "log_config": None,
    }
    try:
        if workers > 1:
            if factory is None:
                raise ValueError("several workers need an app factory")
            os.environ["DATABASE_URL"] = dsn
            uvicorn.run(factory, factory=True, workers=workers, **common)
        else:
            uvicorn.run(build_app(dsn), **common)
    finally:
        if embedded is not None:
            embedded.stop()
