"""Admission decisions taken BEFORE payment: per-payer concurrency and the global queue. Pure.

A refusal carries a Retry-After suggestion when waiting can help; the inputs are counts the store read."""

from __future__ import annotations

import math
from dataclasses import dataclass

_MIN_RETRY_AFTER = 1
_MAX_RETRY_AFTER = 600


@dataclass(frozen=True, slots=True)
class EngineLimits:
    max_queued: int = 200  # jobs waiting for a worker, all tools and payers together
    max_active_per_payer: int = 3  # queued + running + uploading jobs of one payer
    parallelism_hint: int = 1  # jobs the worker fleet runs at once; only shapes Retry-After


@dataclass(frozen=True, slots=True)
class Load:
    payer_active: int
    queued: int
    oldest_payer_job_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # payer_concurrency | queue_full | unknown_tool | invalid_params codes
    message: str
    retry_after: int | None  # seconds; None when retrying the same request cannot succeed
    http_status: int

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "retry_after": self.retry_after}


class AdmissionRefused(RuntimeError):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _bounded(seconds: float) -> int:
    return max(_MIN_RETRY_AFTER, min(_MAX_RETRY_AFTER, math.ceil(seconds)))


def decide(
    load: Load, *, limits: EngineLimits, payer_limit: int | None, expected_seconds: float
) -> Refusal | None:
    per_payer = payer_limit if payer_limit is not None else limits.max_active_per_payer
    if load.payer_active >= per_payer:
        # The payer's oldest job should finish first; if it overran its expected time, ask again soon.
        age = load.oldest_payer_job_age_seconds or 0.0
        return Refusal(
            "payer_concurrency",
            f"at most {per_payer} active jobs per payer",
            _bounded(expected_seconds - age),
            429,
        )
    if load.queued >= limits.max_queued:
        # Wait for the excess (plus this job's own slot) to drain at the fleet's rate.
        backlog = load.queued - limits.max_queued + 1
        return Refusal(
            "queue_full",
            "the generation queue is full",
            _bounded(expected_seconds * backlog / max(limits.parallelism_hint, 1)),
            503,
        )
    return None
