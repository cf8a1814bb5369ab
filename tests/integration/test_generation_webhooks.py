"""Webhook deliveries end to end: signed, retried with one event id, replayable, throttled, bounded and
refused for local destinations unless allow-listed, with the check made at connect time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from resource_server.generation.engine.admission import AdmissionRefused
from resource_server.generation.engine.service import GenerationEngine, JobRequest
from resource_server.generation.engine.states import JobStatus
from resource_server.generation.engine.tools import Step, StepContext, StepOutput, Tool
from resource_server.generation.errors import permanent
from resource_server.generation.webhooks.addresses import AllowList
from resource_server.generation.webhooks.guarded_transport import guarded_client
from resource_server.generation.webhooks.sender import send
from resource_server.generation.webhooks.signing import verify_signature
from tests.fixtures.generation import (
    LOCAL,
    Script,
    dispatching,
    fast_policy,
    make_engine,
    running_workers,
    scripted_step,
    wait_until,
)
from tests.support.fake_providers import serve_app

SECRET = "whsec_integration"
PARAMS = {"prompt": "calm piano", "duration_seconds": 5}


def one_step_tool(name: str = "t") -> Tool:
    return Tool(name, (scripted_step("only", Script()),))


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_try_with_one_event_id(
    generation_pool, start_receiver
):
    receiver, server = await start_receiver(fail_first=2)
    engine = make_engine(generation_pool, [one_step_tool()], webhook_allow=LOCAL)
    job = (
        await engine.submit_job(
            JobRequest("t", PARAMS, payer="p", webhook_url=f"{server.url}/hook", webhook_secret=SECRET)
        )
    ).job

    async with running_workers(engine), dispatching(engine, fast_policy()):
        await wait_until(lambda: _delivered(engine, job.id))

    assert len(receiver.received) == 3
    ids = receiver.event_ids()
    assert len(set(ids)) == 1  # the receiver can deduplicate on it
    for got in receiver.received:
        assert verify_signature(SECRET, got.headers["x-signature"], got.body)
        assert got.headers["x-event-type"] == "job.completed"
    body = receiver.bodies()[-1]
    assert body["id"] == ids[0] and body["type"] == "job.completed"
    assert body["data"]["job"]["id"] == str(job.id) and body["data"]["job"]["status"] == "completed"
    assert "webhook_secret" not in str(body)
    [delivery] = await engine.webhook_deliveries(job.id)
    assert delivery.attempts == 3 and delivery.last_status == 200 and delivery.delivered_at is not None
    assert receiver.received[0].body == receiver.received[2].body  # same bytes on every attempt


async def _delivered(engine: GenerationEngine, job_id) -> bool:
    deliveries = await engine.webhook_deliveries(job_id)
    return bool(deliveries) and all(d.delivered_at is not None for d in deliveries)


async def test_deliveries_give_up_after_the_attempt_budget(generation_pool, start_receiver):
    receiver, server = await start_receiver(fail_first=100)
    engine = make_engine(generation_pool, [one_step_tool()], webhook_allow=LOCAL)
    job = (
        await engine.submit_job(
            JobRequest("t", PARAMS, payer="p", webhook_url=f"{server.url}/hook", webhook_secret=SECRET)
        )
    ).job

    async def gave_up() -> bool:
        deliveries = await engine.webhook_deliveries(job.id)
        return bool(deliveries) and deliveries[0].gave_up_at is not None

    async with running_workers(engine), dispatching(engine, fast_policy()):
        await wait_until(gave_up)
    assert len(receiver.received) == 3
    [delivery] = await engine.webhook_deliveries(job.id)
    assert delivery.last_status == 500 and "try again" in (delivery.last_error or "")


async def test_redeliver_final_replays_the_same_event_id(generation_pool, start_receiver):
    receiver, server = await start_receiver()
    engine = make_engine(generation_pool, [one_step_tool()], webhook_allow=LOCAL)
    job = (
        await engine.submit_job(
            JobRequest("t", PARAMS, payer="p", webhook_url=f"{server.url}/hook", webhook_secret=SECRET)
        )
    ).job
    async with running_workers(engine), dispatching(engine, fast_policy()):
        await wait_until(lambda: _delivered(engine, job.id))
        first = receiver.event_ids()
        replayed = await engine.redeliver_final(job.id)
        assert replayed is not None and str(replayed) == first[0]
        await wait_until(lambda: _count(receiver, 2))
    assert receiver.event_ids() == first * 2
    assert await engine.redeliver_final(uuid4()) is None


async def _count(receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def test_loopback_is_refused_without_the_allow_list_and_allowed_with_it(
    generation_pool, start_receiver
):
    receiver, server = await start_receiver()
    url = f"{server.url}/hook"  # http://127.0.0.1:<port>/hook
    closed = make_engine(generation_pool, [one_step_tool()])
    with pytest.raises(AdmissionRefused) as refused:
        await closed.submit_job(JobRequest("t", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET))
    assert refused.value.refusal.code == "invalid_webhook" and "loopback" in refused.value.refusal.message

    # Even a delivery already in the table (written under an older, looser config) cannot get through:
    # the dispatcher checks again at connect time.
    opened = make_engine(generation_pool, [one_step_tool()], webhook_allow=LOCAL)
    job = (
        await opened.submit_job(JobRequest("t", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET))
    ).job
    async with running_workers(opened):
        await wait_until(lambda: _has_delivery(opened, job.id))
    async with dispatching(opened, fast_policy(allow=AllowList())):
        await wait_until(lambda: _gave_up(opened, job.id))
    [delivery] = await opened.webhook_deliveries(job.id)
    assert delivery.attempts == 1  # refused destinations are not retried
    assert "destination refused" in (delivery.last_error or "") and "loopback" in (delivery.last_error or "")
    assert receiver.received == []

    # With the allow-list the same event goes through (replayed, same id).
    await opened.redeliver_final(job.id)
    async with dispatching(opened, fast_policy(allow=LOCAL)):
        await wait_until(lambda: _delivered(opened, job.id))
    assert receiver.event_ids() == [str(delivery.event_id)]


async def _has_delivery(engine, job_id) -> bool:
    return bool(await engine.webhook_deliveries(job_id))


async def _gave_up(engine, job_id) -> bool:
    deliveries = await engine.webhook_deliveries(job_id)
    return bool(deliveries) and deliveries[0].gave_up_at is not None


async def test_a_public_looking_name_that_resolves_to_loopback_is_refused_at_connect_time(
    generation_pool, start_receiver
):
    receiver, server = await start_receiver()
    answers = {"hooks.example.test": ["127.0.0.1"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    engine = make_engine(generation_pool, [one_step_tool()])  # no allow-list at all
    url = f"http://hooks.example.test:{server.port}/hook"
    job = (
        await engine.submit_job(JobRequest("t", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET))
    ).job  # accepted: the name itself is unremarkable
    async with (
        running_workers(engine),
        dispatching(engine, fast_policy(allow=AllowList()), resolver=resolver),
    ):
        await wait_until(lambda: _gave_up(engine, job.id))
    [delivery] = await engine.webhook_deliveries(job.id)
    assert "resolves to 127.0.0.1" in (delivery.last_error or "")
    assert receiver.received == []

    # Allow-listed, the connection goes to the validated address with the original Host header.
    await engine.redeliver_final(job.id)
    async with dispatching(engine, fast_policy(allow=LOCAL), resolver=resolver):
        await wait_until(lambda: _delivered(engine, job.id))
    assert receiver.received[0].headers["host"] == f"hooks.example.test:{server.port}"


async def test_progress_webhooks_are_opt_in_and_throttled(generation_pool, start_receiver):
    receiver, server = await start_receiver()

    async def chatty(ctx: StepContext) -> StepOutput:
        for i in range(1, 21):
            await ctx.report(i / 20, f"tick {i}")
            await asyncio.sleep(0.02)
        return {"ok": True}

    tool = Tool("chatty", (Step("only", chatty),))
    engine = make_engine(generation_pool, [tool], webhook_allow=LOCAL)
    url = f"{server.url}/hook"
    opted_in = (
        await engine.submit_job(
            JobRequest(
                "chatty", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET, webhook_progress=True
            )
        )
    ).job
    final_only = (
        await engine.submit_job(
            JobRequest("chatty", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET)
        )
    ).job

    async with running_workers(engine), dispatching(engine, fast_policy()):
        await wait_until(lambda: _delivered(engine, opted_in.id))
        await wait_until(lambda: _delivered(engine, final_only.id))

    by_job: dict[str, list[str]] = {}
    for body in receiver.bodies():
        by_job.setdefault(body["data"]["job"]["id"], []).append(body["type"])
    # 20+ progress changes within ~0.5 s: one progress event (5 s throttle), then the final one.
    assert by_job[str(opted_in.id)] == ["job.progress", "job.completed"]
    assert by_job[str(final_only.id)] == ["job.completed"]
    events = await engine.job_events(opted_in.id)
    assert len([e for e in events if e.kind == "progress"]) >= 19  # the event log keeps every change


async def test_failed_and_canceled_jobs_send_their_final_events(generation_pool, start_receiver):
    receiver, server = await start_receiver()
    failing = Tool("failing", (scripted_step("only", Script(errors=[permanent("no")])),))
    blocked = Script(gate=asyncio.Event())
    slow = Tool("slow", (scripted_step("only", blocked),))
    engine = make_engine(generation_pool, [failing, slow], webhook_allow=LOCAL)
    url = f"{server.url}/hook"
    failed = (
        await engine.submit_job(
            JobRequest("failing", PARAMS, payer="p", webhook_url=url, webhook_secret=SECRET)
        )
    ).job
    canceled = (
        await engine.submit_job(JobRequest("slow", PARAMS, payer="q", webhook_url=url, webhook_secret=SECRET))
    ).job
    async with running_workers(engine), dispatching(engine, fast_policy()):
        await asyncio.wait_for(blocked.entered.wait(), 5)
        await engine.cancel_job(canceled.id)
        await wait_until(lambda: _delivered(engine, failed.id))
        await wait_until(lambda: _delivered(engine, canceled.id))
    types = {b["data"]["job"]["id"]: b["type"] for b in receiver.bodies()}
    assert types == {str(failed.id): "job.failed", str(canceled.id): "job.canceled"}
    failure = next(b for b in receiver.bodies() if b["type"] == "job.failed")["data"]["job"]["failure"]
    assert failure["category"] == "permanent" and failure["message"] == "no"
    final = await engine.get_job(canceled.id)
    assert final is not None and final.status is JobStatus.CANCELED


async def test_the_reply_is_read_only_up_to_the_limit_and_slow_receivers_time_out():
    async def endless(request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)

        return StreamingResponse(forever(), status_code=500)

    release = asyncio.Event()

    async def stalls(request) -> Response:
        await release.wait()
        return Response(b"late")

    server = await serve_app(
        Starlette(
            routes=[Route("/endless", endless, methods=["POST"]), Route("/stall", stalls, methods=["POST"])]
        )
    )
    client = guarded_client(LOCAL, timeout=httpx.Timeout(5.0))
    try:
        started = time.monotonic()
        result = await send(
            client,
            url=f"{server.url}/endless",
            secret=SECRET,
            event_id=uuid4(),
            event_type="job.completed",
            body=b"{}",
            max_response_bytes=1024,
            deadline_seconds=5.0,
        )
        assert not result.delivered and result.status == 500
        assert result.error is not None and result.error.startswith("HTTP 500: xxx")
        assert time.monotonic() - started < 2  # stopped reading; did not drain the endless body

        result = await send(
            client,
            url=f"{server.url}/stall",
            secret=SECRET,
            event_id=uuid4(),
            event_type="job.completed",
            body=b"{}",
            max_response_bytes=1024,
            deadline_seconds=0.3,
        )
        assert not result.delivered and result.status is None and "no answer within" in (result.error or "")
    finally:
        release.set()  # let the stalled handler finish so the server stops at once
        await client.aclose()
        await server.stop()
