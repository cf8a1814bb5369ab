"""What to do after a step raised. Pure: the worker applies the decision."""

from __future__ import annotations

from dataclasses import dataclass

from ..backoff import Backoff
from ..errors import ErrorCategory, GenerationError


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay_seconds: float


@dataclass(frozen=True, slots=True)
class FailJob:
    category: ErrorCategory
    code: str
    message: str


def classify(exc: BaseException) -> GenerationError:
    """Anything that is not a GenerationError is a bug here, not a provider's bad day: internal."""
    if isinstance(exc, GenerationError):
        return exc
    if isinstance(exc, TimeoutError):
        return GenerationError(ErrorCategory.TRANSIENT, "the step timed out", code="step_timeout")
    return GenerationError(ErrorCategory.INTERNAL, f"{type(exc).__name__}: {exc}", code="internal_error")


def after_failure(
    error: GenerationError, *, attempts: int, max_attempts: int, backoff: Backoff, draw: float
) -> RetryLater | FailJob:
    """``attempts`` counts the attempt that just failed."""
    if error.category.retryable and attempts < max_attempts:
        return RetryLater(backoff.delay(attempts, draw, at_least=error.retry_after))
    if error.category.retryable:
        return FailJob(error.category, error.code, f"gave up after {attempts} attempts: {error.message}")
    return FailJob(error.category, error.code, error.message)
