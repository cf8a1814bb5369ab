"""Exponential backoff with jitter, capped. Pure: the random draw is an argument.

Used for step retries, webhook redeliveries and settlement-hook retries alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 300.0
    # Share of each delay that is randomised. Not 1.0 ("full jitter"): a floor keeps a burst of
    # failures from retrying almost at once against a provider that is still down.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.factor < 1 or self.cap_seconds < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs base >= 0, factor >= 1, cap >= 0 and 0 <= jitter <= 1")

    def ceiling(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        # min() before the power would be wrong; cap the exponent instead so huge counts cannot overflow.
        exponent = min(retry - 1, 64)
        return float(min(self.cap_seconds, self.base_seconds * self.factor**exponent))

    def delay(self, retry: int, draw: float, *, at_least: float | None = None) -> float:
        """Delay before retry ``retry``; ``draw`` is uniform in [0, 1). ``at_least`` honours a server's
        Retry-After, still bounded by the cap so a hostile value cannot park work for days."""
        if not 0 <= draw <= 1:
            raise ValueError("draw must be in [0, 1]")
        top = self.ceiling(retry)
        value = top * (1 - self.jitter) + top * self.jitter * draw
        if at_least is not None:
            value = max(value, min(at_least, self.cap_seconds))
        return value
