"""SIGINT/SIGTERM become a flag rather than an exception: an exception raised in the middle of starting
PostgreSQL or spawning a child could leave a process nobody stops. Start-up polls the flag between
steps, and the stack then stops everything in reverse order."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class Interrupted(Exception):
    """Stop was requested while the stack was still starting."""


class Shutdown:
    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            # Cleanup is under way; a second Ctrl-C must not abandon half-stopped children.
            print("x402-dev: still stopping, please wait", file=sys.stderr, flush=True)
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True once stop was requested."""
        return self._event.wait(seconds)
