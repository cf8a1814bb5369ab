"""The data folder of one local stack (default `.x402-dev`) and the lock that keeps it to one stack."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class DataDirBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock for the stack's lifetime: two stacks on one folder would share a
        PostgreSQL and overwrite each other's stack.json. The kernel drops it if we die."""
        self.logs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataDirBusy(f"another x402-dev is running on {self.root}") from None
            yield
        finally:
            os.close(fd)
