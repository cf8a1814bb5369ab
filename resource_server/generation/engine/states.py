"""Job and step state machines. Pure: the store enforces them, tests check them directly.

queued    -> running | uploading   a worker claimed it and started the first step (its phase)
queued    -> canceled | failed     canceled before starting, or its tool is unknown
running   -> running               resumed by another worker after a lease ran out, or between steps
running   <-> uploading            the phase of the step now running
running/uploading -> completed     the last step finished
running/uploading -> failed        a step failed permanently or ran out of retries
running/uploading -> canceled      the API canceled it; the worker notices on its next heartbeat
failed    -> queued                retry_job: resume at the failed step
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def active(self) -> bool:
        return self in ACTIVE


FINAL: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.UPLOADING})
# The statuses a step may show while it runs.
PHASES: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.UPLOADING})

_WORKING = (JobStatus.RUNNING, JobStatus.UPLOADING)

ALLOWED: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    {
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.UPLOADING),
        (JobStatus.QUEUED, JobStatus.CANCELED),
        (JobStatus.QUEUED, JobStatus.FAILED),
        *((a, b) for a in _WORKING for b in _WORKING),
        *((a, b) for a in _WORKING for b in FINAL),
        (JobStatus.FAILED, JobStatus.QUEUED),
    }
)


class IllegalTransition(RuntimeError):
    pass


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return (current, new) in ALLOWED


def check_transition(current: JobStatus, new: JobStatus) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"a job cannot go from {current} to {new}")


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


STEP_ALLOWED: frozenset[tuple[StepStatus, StepStatus]] = frozenset(
    {
        (StepStatus.PENDING, StepStatus.RUNNING),
        # A worker that died left the step running; the next one starts it again.
        (StepStatus.RUNNING, StepStatus.RUNNING),
        (StepStatus.RUNNING, StepStatus.SUCCEEDED),
        (StepStatus.RUNNING, StepStatus.FAILED),
        (StepStatus.RUNNING, StepStatus.PENDING),  # a transient failure waits for its retry
        (StepStatus.FAILED, StepStatus.PENDING),  # retry_job
    }
)


def check_step_transition(current: StepStatus, new: StepStatus) -> None:
    if (current, new) not in STEP_ALLOWED:
        raise IllegalTransition(f"a step cannot go from {current} to {new}")
