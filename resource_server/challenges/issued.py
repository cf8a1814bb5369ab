"""Challenges this process issued and no payment has named yet, kept in memory.

A payment for one of them is matched without reading the challenge back: the claim after verifying, one
conditional statement, is what decides, so a stale entry (paid or expired through another replica) costs
nothing but the answer the claim gives anyway. An entry leaves at the first payment that names it; any later
attempt reads the database, as on a replica that never saw the challenge. Bounded: the oldest entries go
first, and a challenge that is gone from here is simply read back."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from datetime import datetime

from .records import Challenge

DEFAULT_MAX_ENTRIES = 4096


class IssuedChallenges:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Challenge] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, challenge: Challenge) -> None:
        if self.max_entries == 0:
            return
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[challenge.id] = challenge

    def take(self, challenge_id: str, *, now: datetime) -> Challenge | None:
        """The challenge, removed, as if read at `now` (the database's clock: expiry is judged by it)."""
        challenge = self._entries.pop(challenge_id, None)
        return None if challenge is None else replace(challenge, now=now)
