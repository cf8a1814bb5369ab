"""The wiring the API layer will use: build_stack, a worker and a dispatcher from it, readiness, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

from pydantic import SecretStr

from resource_server.generation.engine.service import EngineSettings, JobRequest
from resource_server.generation.engine.states import JobStatus
from resource_server.generation.providers.config import ProviderSettings
from resource_server.generation.providers.refine_local import LocalRefiner
from resource_server.generation.stack import build_stack
from tests.fixtures.generation import (
    FAST_WORKER,
    LOCAL,
    FinalLog,
    fast_policy,
    wait_final_handled,
    wait_until,
)

NONCE = "0x" + "42" * 32


async def test_build_stack_runs_a_paid_music_job_end_to_end(generation_pool, fake_elevenlabs, start_receiver):
    fake, server = fake_elevenlabs
    receiver, hook_server = await start_receiver()
    fake.outage()  # the first call fails over to the local synthesizer
    stack = build_stack(
        generation_pool,
        provider_settings=ProviderSettings(
            elevenlabs_api_key=SecretStr(fake.api_key), elevenlabs_base_url=server.url
        ),
        engine_settings=EngineSettings(webhook_allow=LOCAL),
    )
    assert [p.name for p in stack.providers] == ["elevenlabs", "local"]
    assert isinstance(stack.refiner, LocalRefiner)
    hook = FinalLog()
    worker = stack.worker(hook, FAST_WORKER)
    dispatcher = stack.dispatcher(fast_policy())
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(dispatcher.run())]
    try:
        params = {"prompt": "calm piano", "duration_seconds": 10}
        assert await stack.engine.admission_check("music", "0xpayer", params) is None
        quote = stack.engine.quote("music", params)
        submitted = await stack.engine.submit_job(
            JobRequest(
                "music",
                params,
                payer="0xpayer",
                idempotency_key="challenge-42",
                payment_challenge_id="challenge-42",
                payment_nonce=NONCE,
                webhook_url=f"{hook_server.url}/hook",
                webhook_secret="s",
            )
        )
        assert submitted.job.price == quote.to_json()
        done = await wait_final_handled(stack.engine, submitted.job.id, within=20)
        await wait_until(lambda: _count(receiver, 1))
        paid = await stack.engine.set_payment(done.id, tx_hash="0xabc", settlement_status="settled")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stack.aclose()

    assert done.status is JobStatus.COMPLETED and done.result["provider"] == "local"
    [artifact] = done.result["artifacts"]
    assert len(await stack.artifacts.content(UUID(artifact["id"]))) > 10 * 44100 * 2
    assert paid.public_view()["payment"] == {
        "challenge_id": "challenge-42",
        "nonce": NONCE,
        "tx_hash": "0xabc",
        "payer": "0xpayer",
        "settlement_status": "settled",
    }
    assert receiver.bodies()[0]["type"] == "job.completed"
    registry = stack.metrics.registry
    assert (
        registry.get_sample_value("generation_jobs_finished_total", {"tool": "music", "status": "completed"})
        == 1
    )
    fallbacks = registry.get_sample_value(
        "generation_provider_fallbacks_total", {"provider": "elevenlabs", "category": "transient"}
    )
    assert fallbacks == 1
    assert registry.get_sample_value("generation_webhook_attempts_total", {"outcome": "delivered"}) == 1


async def _count(receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def test_stack_readiness_reports_every_provider(generation_pool, fake_elevenlabs):
    _, server = fake_elevenlabs
    stack = build_stack(
        generation_pool,
        provider_settings=ProviderSettings(
            elevenlabs_api_key=SecretStr("wrong"), elevenlabs_base_url=server.url
        ),
    )
    try:
        report = await stack.readiness()
    finally:
        await stack.aclose()
    assert report["ok"] is True and report["degraded"] is True
    assert (
        report["providers"]["elevenlabs"]["ok"] is False
        and "401" in report["providers"]["elevenlabs"]["detail"]
    )
    assert report["providers"]["local"]["ok"] is True
