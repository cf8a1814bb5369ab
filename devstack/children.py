"""Child services of the stack: each runs in its own session with its output in a log file, and is
stopped by SIGTERM to its process group (SIGKILL if it lingers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from shared.child_process import die_with_parent

from .shutdown import Shutdown


class StartupError(RuntimeError):
    pass


class ChildProcess:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._popen = popen

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, url: str, shutdown: Shutdown, timeout: float = 30.0) -> None:
        """Poll `url` until it answers 200, failing fast if the child exits."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                shutdown.check()
                if not self.running:
                    raise StartupError(
                        f"{self.name} exited with code {self._popen.returncode} during start-up; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if http.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"{self.name} did not answer {url} within {timeout:.0f}s; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                shutdown.wait(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Idempotent. The whole group, so helpers the child started go too."""
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signum)
