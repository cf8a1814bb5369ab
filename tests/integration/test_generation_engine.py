"""The pipeline engine on a real PostgreSQL: pipelines, shared queues, retries, failures, guardrails,
settlement hooks, live events and cancellation."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from resource_server.generation.engine.admission import AdmissionRefused, EngineLimits
from resource_server.generation.engine.params import ToolLimits
from resource_server.generation.engine.records import JobEvent, JobRecord
from resource_server.generation.engine.service import GenerationEngine, JobRequest
from resource_server.generation.engine.states import JobStatus, StepStatus
from resource_server.generation.engine.store import JobNotRetryable
from resource_server.generation.engine.tools import Step, StepContext, StepOutput, Tool
from resource_server.generation.engine.worker import Worker
from resource_server.generation.errors import ErrorCategory, GenerationError, permanent, transient
from tests.fixtures.generation import (
    FAST_WORKER,
    FinalLog,
    Script,
    make_engine,
    running_workers,
    scripted_step,
    wait_final_handled,
    wait_status,
    wait_until,
)

PARAMS = {"prompt": "calm piano", "duration_seconds": 5}


def _limits(max_queued: int = 200, per_payer: int = 3, parallelism: int = 1) -> EngineLimits:
    return EngineLimits(max_queued=max_queued, max_active_per_payer=per_payer, parallelism_hint=parallelism)


def three_steps(**scripts: Script) -> Tool:
    names = ("refine", "generate", "store")
    s = {n: scripts.get(n, Script()) for n in names}
    steps = (
        scripted_step("refine", s["refine"], weight=1),
        scripted_step("generate", s["generate"], weight=8),
        scripted_step("store", s["store"], weight=1, phase=JobStatus.UPLOADING),
    )
    return Tool("music", steps, markup_rate=Decimal("0.25"))


async def test_pipeline_completes_through_all_steps(generation_pool):
    tool = three_steps()
    engine = make_engine(generation_pool, [tool])
    hook = FinalLog()
    submitted = await engine.submit_job(JobRequest("music", PARAMS, payer="0xpayer"))
    job = submitted.job
    assert submitted.created and job.status is JobStatus.QUEUED
    assert job.price is not None and job.price["total"] == "0.037500"  # 3 x 0.01 + 25 %

    async with running_workers(engine, on_final=hook):
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED and done.progress == 1.0
    assert (
        done.started_at is not None and done.finished_at is not None and done.finished_at >= done.started_at
    )
    # The result is the last step's output, and each step saw the outputs of the ones before it.
    assert done.result == {"step": "store", "seen": ["generate", "refine"], "prompt": "calm piano"}
    steps = await engine.job_steps(job.id)
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        ("refine", StepStatus.SUCCEEDED, 1),
        ("generate", StepStatus.SUCCEEDED, 1),
        ("store", StepStatus.SUCCEEDED, 1),
    ]
    events = await engine.job_events(job.id)
    statuses = [e.status for e in events if e.kind == "status"]
    assert statuses[0] is JobStatus.QUEUED and statuses[-1] is JobStatus.COMPLETED
    assert JobStatus.UPLOADING in statuses  # the store step's phase
    progress = [e.progress for e in events]
    assert progress == sorted(progress)  # never goes backwards
    assert any(e.kind == "progress" and e.text == "generate halfway" for e in events)
    assert [c.status for c in hook.calls] == [JobStatus.COMPLETED]


async def test_two_workers_share_one_queue_without_double_processing(generation_pool):
    script = Script()

    async def slow(ctx: StepContext) -> StepOutput:
        script.calls.append((ctx.job_id, ctx.attempt))
        await asyncio.sleep(0.02)
        return {"ok": True}

    tool = Tool("work", (Step("only", slow),))
    engine = make_engine(generation_pool, [tool], limits=_limits(max_queued=100, per_payer=100))
    jobs = [(await engine.submit_job(JobRequest("work", PARAMS, payer="p"))).job for _ in range(24)]

    processed: dict[str, int] = {}

    class Counting(Worker):
        async def process(self, job: JobRecord) -> None:
            processed[self.owner] = processed.get(self.owner, 0) + 1
            await super().process(job)

    workers = [Counting(engine.store, engine.tools, config=FAST_WORKER, owner=f"w{i}") for i in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        for job in jobs:
            await wait_status(engine, job.id, JobStatus.COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert sorted(str(j) for j, _ in script.calls) == sorted(str(j.id) for j in jobs)  # each exactly once
    assert all(attempt == 1 for _, attempt in script.calls)
    assert sum(processed.values()) == len(jobs)
    assert set(processed) == {"w0", "w1"}  # both took work from the one queue


async def test_lease_expiry_resumes_at_the_step_it_was_on(generation_pool):
    scripts = {"refine": Script(), "generate": Script(), "store": Script()}
    tool = three_steps(**scripts)
    engine = make_engine(generation_pool, [tool])
    job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job

    # A worker that claims the job, finishes the first step, starts the second and then dies: no
    # heartbeat, no release, nothing but an expiring lease.
    ghost = "ghost"
    claimed = await engine.store.claim(ghost, 1.0, ["music"])
    assert claimed is not None and claimed.id == job.id
    await engine.store.start_step(job.id, ghost, 0, phase=JobStatus.RUNNING, text="refine", progress=0)
    await engine.store.finish_step(
        job.id, ghost, 0, {"step": "refine", "by": ghost}, progress=0.1, result=None, final_lease_seconds=1
    )
    await engine.store.start_step(job.id, ghost, 1, phase=JobStatus.RUNNING, text="generate", progress=0.1)

    hook = FinalLog()
    async with running_workers(engine, on_final=hook):
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED
    assert scripts["refine"].calls == []  # its output was persisted: not run again
    assert [a for _, a in scripts["generate"].calls] == [2]  # the ghost's start counted as attempt 1
    assert done.result["seen"] == ["generate", "refine"]
    # The ghost's late writes are fenced off.
    late = await engine.store.finish_step(
        job.id, ghost, 1, {"late": True}, progress=0.5, result=None, final_lease_seconds=1
    )
    assert late is None
    assert len(hook.calls) == 1


async def test_transient_failure_is_retried_with_backoff_then_succeeds(generation_pool):
    generate = Script(errors=[transient("provider overloaded"), transient("provider overloaded"), None])
    engine = make_engine(generation_pool, [three_steps(generate=generate)])
    job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job

    async with running_workers(engine, on_final=FinalLog()):
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED
    assert [a for _, a in generate.calls] == [1, 2, 3]
    events = await engine.job_events(job.id)
    retries = [e for e in events if "retry_in_seconds" in e.detail]
    assert len(retries) == 2
    # Jittered exponential delays within the configured (fast) schedule.
    assert all(0.025 <= e.detail["retry_in_seconds"] <= 0.2 for e in retries)
    steps = await engine.job_steps(job.id)
    assert steps[1].attempts == 3 and steps[1].error_message is None


async def test_transient_failures_exhaust_the_attempt_budget(generation_pool):
    flaky = Script(errors=[transient("down")] * 5)
    tool = Tool("flaky", (scripted_step("generate", flaky, max_attempts=2),))
    engine = make_engine(generation_pool, [tool])
    job = (await engine.submit_job(JobRequest("flaky", PARAMS, payer="p"))).job

    async with running_workers(engine):
        failed = await wait_status(engine, job.id, JobStatus.FAILED)

    assert failed.failure_category == ErrorCategory.TRANSIENT.value
    assert failed.failure_message is not None and "gave up after 2 attempts" in failed.failure_message
    assert len(flaky.calls) == 2


async def test_permanent_failure_fails_the_job_and_retry_resumes_at_the_failed_step(generation_pool):
    scripts = {
        "refine": Script(),
        "generate": Script(errors=[permanent("the model rejected the parameters", code="bad_parameters")]),
        "store": Script(),
    }
    engine = make_engine(generation_pool, [three_steps(**scripts)])
    hook = FinalLog()
    job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job

    async with running_workers(engine, on_final=hook):
        failed = await wait_final_handled(engine, job.id)
        assert failed.status is JobStatus.FAILED
        assert (failed.failure_category, failed.failure_code, failed.failed_step) == (
            "permanent",
            "bad_parameters",
            "generate",
        )
        assert failed.failure_message == "the model rejected the parameters"
        assert len(scripts["generate"].calls) == 1  # permanent: no retry
        assert [c.status for c in hook.calls] == [JobStatus.FAILED]

        retried = await engine.retry_job(job.id)
        assert retried.status is JobStatus.QUEUED and retried.runs == 2 and retried.failure_category is None
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED
    assert len(scripts["refine"].calls) == 1  # finished before the failure: kept
    assert [a for _, a in scripts["generate"].calls] == [1, 1]  # attempts restart with the retry
    assert len(scripts["store"].calls) == 1
    assert [c.status for c in hook.calls] == [JobStatus.FAILED, JobStatus.COMPLETED]
    with pytest.raises(JobNotRetryable):
        await engine.retry_job(job.id)


async def test_on_final_is_retried_until_it_succeeds(generation_pool):
    engine = make_engine(generation_pool, [three_steps()])
    hook = FinalLog(fail_first=2)
    job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job

    async with running_workers(engine, on_final=hook, count=2):
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED
    assert len(hook.calls) == 3 and done.final_attempts == 2
    await asyncio.sleep(0.3)
    assert len(hook.calls) == 3  # handled: never called again


async def test_guardrails_refuse_before_payment_with_retry_after(generation_pool):
    tool = Tool(
        "music",
        three_steps().steps,
        limits=ToolLimits(max_duration_seconds=30, expected_seconds=40),
    )
    engine = make_engine(generation_pool, [tool], limits=_limits(max_queued=3, per_payer=2, parallelism=2))

    # Per-payer concurrency.
    assert await engine.admission_check("music", "alice", PARAMS) is None
    for _ in range(2):
        await engine.submit_job(JobRequest("music", PARAMS, payer="alice"))
    refusal = await engine.admission_check("music", "alice", PARAMS)
    assert refusal is not None and refusal.code == "payer_concurrency" and refusal.http_status == 429
    assert refusal.retry_after is not None and 1 <= refusal.retry_after <= 40
    with pytest.raises(AdmissionRefused) as refused:
        await engine.submit_job(JobRequest("music", PARAMS, payer="alice"))
    assert refused.value.refusal.code == "payer_concurrency"
    assert await engine.admission_check("music", "bob", PARAMS) is None

    # Global queue limit: 3 queued now.
    await engine.submit_job(JobRequest("music", PARAMS, payer="bob"))
    refusal = await engine.admission_check("music", "carol", PARAMS)
    assert refusal is not None and refusal.code == "queue_full" and refusal.http_status == 503
    assert refusal.retry_after == 20  # 40 s per job, one job over, two in parallel

    # Duration cap: refused whatever the load, and waiting would not help.
    refusal = await engine.admission_check("music", "dave", {"prompt": "x", "duration_seconds": 31})
    assert refusal is not None and refusal.code == "duration_too_long" and refusal.retry_after is None
    refusal = await engine.admission_check("nope", "dave")
    assert refusal is not None and refusal.code == "unknown_tool" and refusal.http_status == 404

    # A worker drains the queue and the payer may submit again.
    async with running_workers(engine):
        await wait_until(lambda: _no_active(engine))
    assert await engine.admission_check("music", "alice", PARAMS) is None


async def _no_active(engine: GenerationEngine) -> bool:
    load = await engine.store.load("alice")
    return load.payer_active == 0 and load.queued == 0


async def test_idempotent_submission_returns_the_same_job(generation_pool):
    engine = make_engine(generation_pool, [three_steps()])
    first = await engine.submit_job(JobRequest("music", PARAMS, payer="p", idempotency_key="challenge-1"))
    again = await engine.submit_job(JobRequest("music", PARAMS, payer="p", idempotency_key="challenge-1"))
    assert first.created and not again.created and again.job.id == first.job.id


async def test_follow_job_yields_events_live_until_final(generation_pool):
    gate = asyncio.Event()
    engine = make_engine(generation_pool, [three_steps(generate=Script(gate=gate))], event_poll_seconds=5.0)
    await engine.start()  # LISTEN/NOTIFY: with a 5 s poll, only notifications keep this test fast
    try:
        job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job
        seen: list[JobEvent] = []
        halfway = asyncio.Event()

        async def follow() -> None:
            async for event in engine.follow_job(job.id):
                seen.append(event)
                if event.text == "generate halfway":
                    halfway.set()

        follower = asyncio.create_task(follow())
        async with running_workers(engine):
            await asyncio.wait_for(halfway.wait(), 5)
            assert not follower.done()
            gate.set()
            await asyncio.wait_for(follower, 5)
    finally:
        await engine.stop()

    assert seen[0].status is JobStatus.QUEUED and seen[-1].status is JobStatus.COMPLETED
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids))
    # Resuming after an event id replays only what came later.
    tail = [e async for e in engine.follow_job(job.id, after_id=ids[-2])]
    assert [e.id for e in tail] == ids[-1:]


async def test_cancel_stops_a_running_job_and_settles_it_as_canceled(generation_pool):
    gate = asyncio.Event()  # never set: the step would run forever
    generate = Script(gate=gate)
    engine = make_engine(generation_pool, [three_steps(generate=generate)])
    hook = FinalLog()
    job = (await engine.submit_job(JobRequest("music", PARAMS, payer="p"))).job

    async with running_workers(engine, on_final=hook):
        await asyncio.wait_for(generate.entered.wait(), 5)
        canceled = await engine.cancel_job(job.id)
        assert canceled.status is JobStatus.CANCELED
        done = await wait_final_handled(engine, job.id)
        again = await engine.cancel_job(job.id)  # idempotent on a final job

    assert done.status is JobStatus.CANCELED and again.status is JobStatus.CANCELED
    assert [c.status for c in hook.calls] == [JobStatus.CANCELED]
    steps = await engine.job_steps(job.id)
    assert steps[2].status is StepStatus.PENDING  # nothing ran after the cancel


async def test_unexpected_exception_is_internal_and_not_retried(generation_pool):
    async def broken(ctx: StepContext) -> StepOutput:
        raise KeyError("missing")

    engine = make_engine(generation_pool, [Tool("broken", (Step("only", broken),))])
    job = (await engine.submit_job(JobRequest("broken", PARAMS, payer="p"))).job
    async with running_workers(engine):
        failed = await wait_status(engine, job.id, JobStatus.FAILED)
    assert failed.failure_category == "internal" and failed.failure_code == "internal_error"
    steps = await engine.job_steps(job.id)
    assert steps[0].attempts == 1


async def test_generation_error_categories_round_trip_to_the_job(generation_pool):
    refuse = Script(errors=[GenerationError(ErrorCategory.TERMS, "not allowed", code="bad_prompt")])
    engine = make_engine(generation_pool, [Tool("t", (scripted_step("only", refuse),))])
    job = (await engine.submit_job(JobRequest("t", PARAMS, payer="p"))).job
    async with running_workers(engine):
        failed = await wait_status(engine, job.id, JobStatus.FAILED)
    assert (failed.failure_category, failed.failure_code) == ("terms", "bad_prompt")


async def test_an_output_that_cannot_be_stored_fails_the_step_as_internal(generation_pool):
    async def odd(ctx: StepContext) -> StepOutput:
        return {"price": Decimal("1.5")}  # not JSON

    engine = make_engine(generation_pool, [Tool("odd", (Step("only", odd),))])
    job = (await engine.submit_job(JobRequest("odd", PARAMS, payer="p"))).job
    async with running_workers(engine):
        failed = await wait_status(engine, job.id, JobStatus.FAILED)
    assert failed.failure_category == "internal"
