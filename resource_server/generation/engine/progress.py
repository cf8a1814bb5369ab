"""Overall job progress from per-step weights. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def job_progress(weights: Sequence[float], finished_steps: int, step_fraction: float = 0.0) -> float:
    """Progress in [0, 1] when ``finished_steps`` steps are done and the next is ``step_fraction`` through.

    Clamped, because a provider reporting 1.2 or -0.1 must not break the database constraint."""
    total = sum(weights)
    if total <= 0:
        return 1.0 if finished_steps >= len(weights) else 0.0
    done = sum(weights[:finished_steps])
    if finished_steps < len(weights):
        done += weights[finished_steps] * min(max(step_fraction, 0.0), 1.0)
    return min(max(done / total, 0.0), 1.0)


def worth_recording(previous: float, new: float, previous_text: str, new_text: str) -> bool:
    """A change worth an event: text changed or at least one percentage point moved (or reached the end).

    Providers may report per audio block; recording each sub-percent tick would flood the event log."""
    if new_text != previous_text:
        return True
    if new >= 1.0 > previous:
        return True
    return abs(new - previous) >= 0.01
