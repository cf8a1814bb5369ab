"""The error vocabulary shared by steps, providers and the engine.

The category alone decides what happens next, so every failure that crosses a module boundary carries one:
transient errors are retried with backoff, everything else ends the job (and the payer is not charged)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCategory(StrEnum):
    TRANSIENT = "transient"  # outage, rate limit, timeout: the same request may succeed later
    PERMANENT = "permanent"  # bad input, refused credentials, output over a cap: retrying cannot help
    TERMS = "terms"  # the provider refused the content itself (bad_prompt)
    INTERNAL = "internal"  # an unexpected exception here: a bug, so it is not retried blindly
    TIMEOUT = "timeout"  # the job ran past its deadline (a paid job's payment window): it is not resumed

    @property
    def retryable(self) -> bool:
        return self is ErrorCategory.TRANSIENT


class GenerationError(Exception):
    """A classified failure. ``code`` is a short machine-readable reason shown to API clients."""

    def __init__(
        self,
        category: ErrorCategory,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.code = code or category.value
        self.retry_after = retry_after


def transient(message: str, *, code: str = "transient", retry_after: float | None = None) -> GenerationError:
    return GenerationError(ErrorCategory.TRANSIENT, message, code=code, retry_after=retry_after)


def deadline_exceeded(message: str = "the job ran past its deadline") -> GenerationError:
    return GenerationError(ErrorCategory.TIMEOUT, message, code="deadline_exceeded")


def permanent(message: str, *, code: str = "permanent") -> GenerationError:
    return GenerationError(ErrorCategory.PERMANENT, message, code=code)
