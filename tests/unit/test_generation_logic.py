"""Pure logic of the generation engine: state machines, backoff, retry decisions, pricing, progress,
parameter caps and admission decisions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from resource_server.generation.backoff import Backoff
from resource_server.generation.engine.admission import EngineLimits, Load, decide
from resource_server.generation.engine.failures import FailJob, RetryLater, after_failure, classify
from resource_server.generation.engine.params import InvalidParams, ToolLimits, validate_prompt_duration
from resource_server.generation.engine.pricing import StepPrice, price_breakdown
from resource_server.generation.engine.progress import job_progress, worth_recording
from resource_server.generation.engine.states import (
    ALLOWED,
    IllegalTransition,
    JobStatus,
    StepStatus,
    check_step_transition,
    check_transition,
)
from resource_server.generation.errors import ErrorCategory, GenerationError, permanent, transient

S = JobStatus


def test_final_statuses_are_exits_except_retry_of_failed():
    for final in (S.COMPLETED, S.CANCELED):
        assert not any(a is final for a, _ in ALLOWED)
    assert {b for a, b in ALLOWED if a is S.FAILED} == {S.QUEUED}
    assert S.COMPLETED.final and S.FAILED.final and S.CANCELED.final
    assert S.QUEUED.active and S.RUNNING.active and S.UPLOADING.active


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.RUNNING),
        (S.RUNNING, S.UPLOADING),
        (S.UPLOADING, S.COMPLETED),
        (S.RUNNING, S.FAILED),
        (S.QUEUED, S.CANCELED),
        (S.UPLOADING, S.CANCELED),
        (S.FAILED, S.QUEUED),
    ],
)
def test_allowed_transitions(current, new):
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [(S.QUEUED, S.COMPLETED), (S.COMPLETED, S.RUNNING), (S.CANCELED, S.QUEUED), (S.FAILED, S.RUNNING)],
)
def test_illegal_transitions(current, new):
    with pytest.raises(IllegalTransition):
        check_transition(current, new)


def test_step_transitions():
    check_step_transition(StepStatus.RUNNING, StepStatus.RUNNING)  # resumed after a dead worker
    check_step_transition(StepStatus.FAILED, StepStatus.PENDING)  # retry_job
    with pytest.raises(IllegalTransition):
        check_step_transition(StepStatus.SUCCEEDED, StepStatus.RUNNING)


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap():
    b = Backoff(base_seconds=1, factor=2, cap_seconds=10, jitter=0.5)
    assert [b.ceiling(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert b.delay(3, 0.0) == 2.0 and b.delay(3, 1.0) == 4.0  # [top/2, top]
    assert b.delay(100, 0.5) <= 10  # huge retry counts neither overflow nor exceed the cap
    assert b.delay(1, 0.0, at_least=7) == 7  # Retry-After honoured...
    assert b.delay(1, 0.0, at_least=10_000) == 10  # ...within the cap
    with pytest.raises(ValueError):
        b.ceiling(0)


def test_retry_decisions_follow_the_error_category():
    backoff = Backoff(base_seconds=1, cap_seconds=60, jitter=0)
    assert after_failure(transient("x"), attempts=1, max_attempts=3, backoff=backoff, draw=0.3) == RetryLater(
        1
    )
    assert after_failure(transient("x"), attempts=2, max_attempts=3, backoff=backoff, draw=0.3) == RetryLater(
        2
    )
    exhausted = after_failure(transient("x"), attempts=3, max_attempts=3, backoff=backoff, draw=0.3)
    assert isinstance(exhausted, FailJob) and exhausted.category is ErrorCategory.TRANSIENT
    for error in (permanent("x"), GenerationError(ErrorCategory.TERMS, "x"), classify(KeyError("k"))):
        assert isinstance(after_failure(error, attempts=1, max_attempts=3, backoff=backoff, draw=0), FailJob)
    assert classify(TimeoutError()).category is ErrorCategory.TRANSIENT
    assert classify(ValueError("boom")).category is ErrorCategory.INTERNAL


def test_price_is_the_exact_sum_of_steps_plus_markup_rounded_up_once():
    components = [
        ("refine", StepPrice(fixed=Decimal("0.001"))),
        ("generate", StepPrice(per_second=Decimal("0.0021"))),
        ("store", StepPrice(fixed=Decimal("0.0005"))),
    ]
    b = price_breakdown(components, duration_seconds=Decimal("7.5"), markup_rate=Decimal("0.15"))
    assert [line.amount for line in b.lines] == [Decimal("0.001"), Decimal("0.01575"), Decimal("0.0005")]
    assert b.subtotal == Decimal("0.01725")
    # 0.01725 * 1.15 = 0.0198375 -> ceiling to 6 decimals
    assert b.total == Decimal("0.019838")
    assert sum(line.amount for line in b.lines) + b.markup == b.total
    assert b.atomic_total() == 19838
    assert b.to_json()["total"] == "0.019838"
    # No markup and an already-exact total: nothing is added.
    flat = price_breakdown(components[:1], duration_seconds=Decimal(0), markup_rate=Decimal(0))
    assert flat.total == Decimal("0.001000") and flat.markup == 0
    with pytest.raises(ValueError):
        price_breakdown(components, duration_seconds=Decimal(1), markup_rate=Decimal("-0.1"))


def test_progress_weights_and_recording_threshold():
    weights = [1, 8, 1]
    assert job_progress(weights, 0) == 0
    assert job_progress(weights, 1, 0.5) == pytest.approx(0.5)
    assert job_progress(weights, 3) == 1
    assert job_progress(weights, 1, 7.0) == pytest.approx(0.9)  # a provider's bogus fraction is clamped
    assert worth_recording(0.1, 0.105, "a", "a") is False
    assert worth_recording(0.1, 0.12, "a", "a") is True
    assert worth_recording(0.1, 0.1, "a", "b") is True
    assert worth_recording(0.995, 1.0, "a", "a") is True


def test_prompt_and_duration_caps():
    limits = ToolLimits(max_duration_seconds=30, min_duration_seconds=1, max_prompt_chars=20)
    ok = validate_prompt_duration({"prompt": "  calm   piano ", "duration_seconds": "12.5"}, limits)
    assert ok == {"prompt": "calm piano", "duration_seconds": 12.5}
    cases: list[tuple[dict[str, object], str]] = [
        ({"prompt": "x", "duration_seconds": 31}, "duration_too_long"),
        ({"prompt": "x", "duration_seconds": 0.5}, "duration_too_short"),
        ({"prompt": "x" * 21, "duration_seconds": 5}, "prompt_too_long"),
        ({"prompt": "", "duration_seconds": 5}, "invalid_prompt"),
        ({"prompt": "x", "duration_seconds": True}, "invalid_duration"),
        ({"prompt": "x", "duration_seconds": "nan"}, "invalid_duration"),
    ]
    for params, code in cases:
        with pytest.raises(InvalidParams) as exc:
            validate_prompt_duration(params, limits)
        assert exc.value.code == code


def test_admission_decisions_and_retry_after():
    limits = EngineLimits(max_queued=10, max_active_per_payer=2, parallelism_hint=4)
    assert decide(Load(1, 9), limits=limits, payer_limit=None, expected_seconds=30) is None
    busy = decide(
        Load(2, 0, oldest_payer_job_age_seconds=12), limits=limits, payer_limit=None, expected_seconds=30
    )
    assert busy is not None and busy.code == "payer_concurrency" and busy.retry_after == 18
    overdue = decide(Load(2, 0, 95.0), limits=limits, payer_limit=None, expected_seconds=30)
    assert overdue is not None and overdue.retry_after == 1  # never 0 or negative
    assert decide(Load(2, 0), limits=limits, payer_limit=5, expected_seconds=30) is None  # the tool's own cap
    full = decide(Load(0, 13), limits=limits, payer_limit=None, expected_seconds=30)
    assert full is not None and full.code == "queue_full" and full.retry_after == 30  # 4 over x 30 s / 4
    huge = decide(Load(0, 10_000), limits=limits, payer_limit=None, expected_seconds=30)
    assert huge is not None and huge.retry_after == 600  # bounded
