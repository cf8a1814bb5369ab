"""The settlement state machine. Pure: the ledger enforces it, tests check it directly.

received  -> submitted   a signed transaction is stored (and then broadcast)
received  -> failed      re-verification failed before anything was sent
submitted -> submitted   another transaction stored: the first was dropped, refused, stuck, or carried
                         a batch the transfer failed inside
submitted -> confirmed   a receipt with status 1 and the expected logs
submitted -> failed      a reverted receipt, or the authorization was consumed elsewhere
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (Status.CONFIRMED, Status.FAILED)


ALLOWED: frozenset[tuple[Status, Status]] = frozenset(
    {
        (Status.RECEIVED, Status.SUBMITTED),
        (Status.RECEIVED, Status.FAILED),
        (Status.SUBMITTED, Status.SUBMITTED),
        (Status.SUBMITTED, Status.CONFIRMED),
        (Status.SUBMITTED, Status.FAILED),
    }
)


class IllegalTransition(RuntimeError):
    pass


def check_transition(current: Status, new: Status) -> None:
    if (current, new) not in ALLOWED:
        raise IllegalTransition(f"settlement cannot go from {current} to {new}")
