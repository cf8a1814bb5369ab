"""A real PostgreSQL 16 in a data folder, for when no DATABASE_URL is configured.

Backed by the ``pgserver`` wheel, which ships its own PostgreSQL binaries.
Findings about pgserver 0.1.4 that shape this module:

* ``get_server(dir, cleanup_mode="stop")`` runs initdb (trust auth, user
  ``postgres``) on first use, then ``pg_ctl start`` with TCP disabled (``-h ""``) and the
  unix socket in the data folder (or, when that path is too long for a socket, in
  ``$XDG_RUNTIME_DIR/python_PostgresServer/<hash>``). Its URI is
  ``postgresql://postgres:@/postgres?host=<socket dir>``, which asyncpg accepts; we
  rebuild it with the path percent-encoded. pgserver passes the socket folder to postgres
  unquoted, so a data folder whose path contains whitespace cannot start: we refuse it
  up front with a clear error.
* As root it creates a system user ``pgserver`` (``useradd``), chowns the data folder to
  it, and adds ``o+rx`` to every parent folder of the data folder and of its own binaries,
  because PostgreSQL refuses to run as root.
* Servers are shared: within a process ``get_server`` returns the same handle for the same
  folder, and across processes a running postmaster is reused. pgserver counts users per
  *process* (pids in ``<data>/.handle_pids.json``) and stops the server when the last
  process lets go, so we keep our own per-handle count on top, and drop pids of dead
  processes first, otherwise a process killed with SIGKILL would pin the server forever.
* pgserver passes no server settings, so initdb's default ``max_connections`` (100) would
  apply. We append our settings to ``postgresql.conf`` once and restart the server if
  we are its only user; if another process shares it, the settings take effect on its
  next restart.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

_logger = logging.getLogger(__name__)

_CONF_MARKER = "# x402-stack settings"
DEFAULT_MAX_CONNECTIONS = 200


@dataclass
class _Shared:
    server: PostgresServer
    dsn: str
    refs: int


# One pgserver handle per data folder per process, shared by every EmbeddedPostgres on it.
_registry: dict[Path, _Shared] = {}
_registry_lock = threading.Lock()


class EmbeddedPostgres:
    """Starts (or joins) a PostgreSQL server in ``data_dir`` and stops it when the last user leaves.

    ``start`` blocks for a second or two on first use: call it from a thread
    (``asyncio.to_thread``) inside a running event loop.
    """

    def __init__(self, data_dir: Path, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        if any(ch.isspace() for ch in str(self.data_dir)):
            raise ValueError(f"embedded PostgreSQL cannot use a data folder with whitespace: {self.data_dir}")
        self.max_connections = max_connections
        self._dsn: str | None = None

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._dsn

    def start(self) -> str:
        """Start or join the server; returns an asyncpg DSN for the ``postgres`` database."""
        if self._dsn is not None:
            return self._dsn
        with _registry_lock:
            shared = _registry.get(self.data_dir)
            if shared is None:
                server = _open_server(self.data_dir, self.max_connections)
                shared = _Shared(server=server, dsn=_dsn_for(server), refs=0)
                _registry[self.data_dir] = shared
            shared.refs += 1
            self._dsn = shared.dsn
        return self._dsn

    def stop(self) -> None:
        """Leave the server; the last user in the last process stops it. Safe to call twice."""
        if self._dsn is None:
            return
        self._dsn = None
        with _registry_lock:
            shared = _registry[self.data_dir]
            shared.refs -= 1
            if shared.refs > 0:
                return
            del _registry[self.data_dir]
            shared.server.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _open_server(data_dir: Path, max_connections: int) -> PostgresServer:
    # Imported late so deployments with DATABASE_URL never load it. platformdirs warns at
    # import when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to
    # /tmp/runtime-<uid>, which is fine for pgserver's lock file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_handles(data_dir)
    server = get_server(data_dir, cleanup_mode="stop")
    if not _write_settings(data_dir, max_connections):
        return server
    if server.global_process_id_list.get() != [os.getpid()]:
        _logger.warning(
            "embedded PostgreSQL in %s is shared with another process; "
            "max_connections=%d applies after its next restart",
            data_dir,
            max_connections,
        )
        return server
    # Restart through pgserver itself so its bookkeeping (pids, postmaster info) stays right.
    server.cleanup()
    return get_server(data_dir, cleanup_mode="stop")


def _write_settings(data_dir: Path, max_connections: int) -> bool:
    """Append our settings to postgresql.conf once; True when the file changed."""
    conf = data_dir / "postgresql.conf"
    text = conf.read_text()
    if _CONF_MARKER in text:
        return False
    # Appending keeps the file's owner (the pgserver user when we run as root).
    with conf.open("a") as handle:
        handle.write(f"\n{_CONF_MARKER}\nmax_connections = {max_connections}\n")
    return True


def _drop_dead_handles(data_dir: Path) -> None:
    import psutil
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    pids_file = data_dir / ".handle_pids.json"
    if not pids_file.exists():
        return
    with PostgresServer._lock:
        handles = DiskList(pids_file)
        pids = handles.get()
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.put(alive)


def _dsn_for(server: PostgresServer) -> str:
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        host = quote(str(info.socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={info.port}"
    return f"postgresql://postgres@{info.hostname}:{info.port}/postgres"
