"""Child processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Children run in their own session (so a terminal's Ctrl-C reaches only the parent, which stops them
    # in order); then nothing would stop them if the parent were SIGKILLed. On Linux the kernel can.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen (with start_new_session=True); None where unsupported."""
    return _die_with_parent if sys.platform == "linux" else None
