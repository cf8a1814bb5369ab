"""The generation API's reads, on real PostgreSQL with an in-process worker: who may see a job (token,
payer signature, nobody else, and no way to tell an unknown job from a hidden one), the events stream,
signed result links and their expiry, webhook replays, the catalogue and health.

Jobs here are submitted straight to the engine (as the paid handler does after payment), so no chain is
needed; test_generation_api.py covers the paid path."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from pydantic import SecretStr

from resource_server.generation.engine.records import JobRecord
from resource_server.generation.engine.service import JobRequest
from resource_server.generation.providers.config import ProviderSettings
from resource_server.generation.tools.echo import echo_tool
from resource_server.generation_api.access import payer_auth_message
from tests.fixtures.generation import StartReceiver, wait_until
from tests.integration.test_generation_api import Clock, GenServer, StartGeneration, generation_servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def start_generation(fresh_database: str) -> AsyncIterator[StartGeneration]:
    async with generation_servers(fresh_database) as start:
        yield start


PROMPT = {"prompt": "rain on a tin roof", "duration_seconds": 2}
SECRET = "whsec_access_tests_secret"


async def submit(
    gen: GenServer, payer: str = "0x0000000000000000000000000000000000000001", **kwargs: Any
) -> tuple[JobRecord, str]:
    tool = kwargs.pop("tool", "music")
    params = kwargs.pop("params", PROMPT)
    job = (await gen.api.engine.submit_job(JobRequest(tool, params, payer=payer, **kwargs))).job
    return job, gen.api.job_token(job)


def payer_auth(account: Any, job_id: uuid.UUID, timestamp: int) -> str:
    signed = Account.sign_message(encode_defunct(text=payer_auth_message(job_id, timestamp)), account.key)
    return f"{timestamp}.0x{bytes(signed.signature).hex()}"


async def completed(gen: GenServer, job_id: uuid.UUID, token: str) -> dict[str, Any]:
    return await gen.wait_job(str(job_id), token, lambda v: v["status"] == "completed")


# -- visibility ------------------------------------------------------------------------------------------


async def test_a_job_is_visible_with_its_token_or_its_payers_signature_and_to_nobody_else(start_generation):
    clock = Clock()
    gen = await start_generation(run_worker=False, clock=clock)
    owner, stranger = Account.create(), Account.create()
    job, token = await submit(gen, payer=owner.address)
    other, other_token = await submit(gen)
    path = f"/jobs/{job.id}"
    now = int(time.time())

    assert (await gen.get(path, headers={"x-job-token": token})).status_code == 200
    assert (await gen.get(path, params={"token": token})).status_code == 200
    assert (await gen.get(path, headers={"x-job-auth": payer_auth(owner, job.id, now)})).status_code == 200

    hidden = [
        await gen.get(path),
        await gen.get(path, headers={"x-job-token": other_token}),  # another job's token
        await gen.get(path, headers={"x-job-token": token[:-2] + "AA"}),
        await gen.get(path, headers={"x-job-auth": payer_auth(stranger, job.id, now)}),
        await gen.get(
            path, headers={"x-job-auth": payer_auth(owner, other.id, now)}
        ),  # signed for another job
        await gen.get(path, headers={"x-job-auth": payer_auth(owner, job.id, now - 3600)}),  # stale
        await gen.get(path, headers={"x-job-auth": "garbage"}),
        await gen.get(f"/jobs/{uuid.uuid4()}", headers={"x-job-token": token}),  # unknown
        await gen.get("/jobs/not-a-uuid", headers={"x-job-token": token}),
    ]
    unknown = await gen.get(f"/jobs/{uuid.uuid4()}")
    for response in hidden:
        assert response.status_code == 404
        assert response.json() == unknown.json()  # nothing tells an unknown job from a hidden one
    # No listing, under any path.
    assert (await gen.get("/jobs")).status_code in (404, 405)
    assert (await gen.get("/jobs/", params={"token": token})).status_code in (404, 405)

    clock.offset = 3600  # the owner's fresh signature still works when it is fresh by the server's clock
    later = int(time.time()) + 3600
    assert (await gen.get(path, headers={"x-job-auth": payer_auth(owner, job.id, later)})).status_code == 200


async def test_the_job_view_has_status_progress_timings_result_links_and_payment(start_generation):
    gen = await start_generation()
    job, token = await submit(gen)
    view = await completed(gen, job.id, token)

    assert view["id"] == str(job.id) and view["tool"] == "music" and view["progress"] == 1
    assert view["status_text"] == "completed" and view["failure"] is None
    assert view["timings"]["queued_seconds"] >= 0 and view["timings"]["running_seconds"] > 0
    [artifact] = view["result"]["artifacts"]
    assert artifact["media_type"] == "audio/wav" and artifact["duration_seconds"] == 2
    assert view["links"]["self"] == f"{gen.url}/jobs/{job.id}"
    assert view["links"]["result"].startswith(f"{gen.url}/jobs/{job.id}/result?expires=")
    assert view["payment"] == {
        "challenge_id": None,
        "nonce": None,  # submitted without a payment
        "tx_hash": None,
        "payer": "0x0000000000000000000000000000000000000001",
        "settlement_status": None,
        "receipt_url": None,
    }
    assert view["deadline_at"] is None  # submitted without one; paid jobs get the tool's longest job


# -- results ---------------------------------------------------------------------------------------------


async def test_a_signed_result_link_downloads_without_the_token_and_expires(start_generation):
    clock = Clock()
    gen = await start_generation(clock=clock, link_ttl_seconds=60)
    job, token = await completed_job(gen)
    view = await completed(gen, job.id, token)
    link = view["links"]["result"]

    ok = await gen.http.get(link)
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav"
    assert ok.headers["content-disposition"] == 'attachment; filename="music.wav"'
    assert ok.content[:4] == b"RIFF"

    tampered = link[:-1] + ("0" if link[-1] != "0" else "1")
    assert (await gen.http.get(tampered)).status_code == 404
    other_job, _ = await submit(gen)
    assert (await gen.http.get(link.replace(str(job.id), str(other_job.id)))).status_code == 404

    clock.offset = 61
    expired = await gen.http.get(link)
    assert expired.status_code == 403 and expired.json()["error"] == "link_expired"
    assert (await gen.get(f"/jobs/{job.id}/result", headers={"x-job-token": token})).status_code == 200


async def completed_job(gen: GenServer) -> tuple[JobRecord, str]:
    job, token = await submit(gen)
    await completed(gen, job.id, token)
    return job, token


async def test_no_result_before_completion_and_none_for_a_tool_without_artifacts(start_generation):
    gen = await start_generation(extra_tools=[echo_tool()])
    waiting, token = await submit(gen, hold_seconds=600)  # held: no worker takes it yet
    early = await gen.get(f"/jobs/{waiting.id}/result", headers={"x-job-token": token})
    assert early.status_code == 409 and early.json()["error"] == "job_not_completed"
    assert early.headers["retry-after"] == "2" and early.json()["status"] == "queued"

    echo, echo_token = await submit(gen, tool="echo", params={"message": "hello"})
    view = await completed(gen, echo.id, echo_token)
    assert view["result"] == {"message": "hello"}
    none = await gen.get(f"/jobs/{echo.id}/result", headers={"x-job-token": echo_token})
    assert none.status_code == 404 and none.json()["error"] == "no_artifact"


# -- events ----------------------------------------------------------------------------------------------


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], **orjson.loads(fields["data"])})
    return events


async def test_the_events_stream_yields_progress_then_completed_and_resumes_after_last_event_id(
    start_generation,
):
    gen = await start_generation()
    job, token = await submit(gen, params={"prompt": "slow strings", "duration_seconds": 4})

    async with gen.http.stream("GET", f"{gen.url}/jobs/{job.id}/events", params={"token": token}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = (await response.aread()).decode()
    events = parse_sse(text)

    kinds = [(e["event"], e["status"]) for e in events]
    assert kinds[0] == ("status", "queued") and kinds[-1] == ("status", "completed")
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(0 < e["progress"] <= 1 for e in progress)
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})

    middle = events[len(events) // 2]["id"]
    async with gen.http.stream(
        "GET", f"{gen.url}/jobs/{job.id}/events", headers={"x-job-token": token, "last-event-id": str(middle)}
    ) as response:
        resumed = parse_sse((await response.aread()).decode())
    assert [e["id"] for e in resumed] == [e["id"] for e in events if e["id"] > middle]

    assert (await gen.get(f"/jobs/{job.id}/events")).status_code == 404
    bad = await gen.get(f"/jobs/{job.id}/events", headers={"x-job-token": token, "last-event-id": "abc"})
    assert bad.status_code == 400


# -- webhooks --------------------------------------------------------------------------------------------


async def test_redeliver_replays_the_final_event_with_the_same_event_id(
    start_generation, start_receiver: StartReceiver
):
    receiver, hook = await start_receiver()
    gen = await start_generation()
    job, token = await submit(gen, webhook_url=f"{hook.url}/hook", webhook_secret=SECRET)
    await wait_until(lambda: _received(receiver, 1), within=30)

    replay = await gen.post(f"/jobs/{job.id}/webhook/redeliver", headers={"x-job-token": token})

    assert replay.status_code == 202, replay.text
    await wait_until(lambda: _received(receiver, 2), within=30)
    first, second = receiver.received
    assert first.headers["x-event-id"] == second.headers["x-event-id"] == replay.json()["event_id"]
    assert orjson.loads(first.body) == orjson.loads(second.body)
    assert (await gen.post(f"/jobs/{job.id}/webhook/redeliver")).status_code == 404  # no token
    plain, plain_token = await submit(gen)
    refused = await gen.post(f"/jobs/{plain.id}/webhook/redeliver", headers={"x-job-token": plain_token})
    assert refused.status_code == 409 and refused.json()["error"] == "no_webhook"


async def _received(receiver: Any, n: int) -> bool:
    return len(receiver.received) >= n


# -- catalogue, quotes and health ------------------------------------------------------------------------


async def test_the_catalogue_describes_inputs_limits_price_and_payment(start_generation):
    gen = await start_generation(run_worker=False)
    body = (await gen.get("/tools")).json()
    [music] = body["tools"]
    assert body["generate"] == f"{gen.url}/generate"
    assert music["id"] == "music" and music["description"]
    schema = music["inputSchema"]
    assert schema["required"] == ["prompt", "duration_seconds"] and schema["additionalProperties"] is False
    assert schema["properties"]["duration_seconds"] == {
        "type": "number",
        "minimum": 1.0,
        "maximum": 120.0,
        "description": "length of the output in seconds (the price depends on it)",
    }
    assert music["limits"]["maxDurationSeconds"] == 120 and music["limits"]["maxJobSeconds"] == 900
    assert music["price"]["steps"][1] == {"step": "generate", "fixed": "0", "perSecond": "0.002"}
    assert music["price"]["markupRate"] == "0.2" and music["price"]["dependsOn"] == ["duration_seconds"]
    assert (
        music["payment"]["maxTimeoutSeconds"] == 990 and music["payment"]["accepts"][0]["payTo"] == gen.pay_to
    )
    assert music["urls"]["quote"] == f"{gen.url}/tools/music/quote"
    assert (await gen.get("/tools/music")).json() == music
    missing = await gen.get("/tools/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_tool"

    quote = await gen.post("/tools/music/quote", json={"inputs": {"prompt": "x", "duration_seconds": 10}})
    assert quote.status_code == 200, quote.text
    q = quote.json()
    # (0.001 + 0.002 x 10 + 0.0005 + 0.0005) x 1.2
    assert q["price"]["total"] == "0.0264" and q["amounts"][0]["amount"] == "26400"
    assert q["settlement"] == "on_completion" and q["maxTimeoutSeconds"] == 990
    assert q["paymentRequired"]["accepts"][0]["extra"]["challengeId"] == q["challenge"]["id"]
    bad = await gen.post("/tools/music/quote", json={"inputs": {"prompt": "x", "duration_seconds": 0}})
    assert bad.status_code == 400 and bad.json()["error"] == "duration_too_short"


async def test_the_resource_servers_own_quote_still_prices_routes_next_to_the_tools(start_generation):
    gen = await start_generation(
        run_worker=False, routes=[{"method": "GET", "path": "/weather", "price": "$0.001"}]
    )
    weather = await gen.post("/quote", json={"method": "GET", "path": "/weather"})
    assert weather.status_code == 200 and weather.json()["price"]["amounts"][0]["amount"] == "1000"
    # Tools are quoted by POST /tools/{id}/quote; /quote prices the pricing file's routes only.
    generate = await gen.post("/quote", json={"method": "POST", "path": "/generate", "params": {}})
    assert generate.status_code == 404 and generate.json()["error"] == "no_priced_route"
    # The pricing file's routes keep their own 402s next to the generation API.
    assert (await gen.get("/weather")).status_code == 402


async def test_health_reports_every_provider_and_shows_a_degraded_one(start_generation, fake_elevenlabs):
    _, server = fake_elevenlabs
    gen = await start_generation(
        run_worker=False,
        provider_settings=ProviderSettings(
            elevenlabs_api_key=SecretStr("wrong-key"), elevenlabs_base_url=server.url
        ),
    )
    response = await gen.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "degraded" and health["database"] == "ok"
    assert (
        health["providers"]["elevenlabs"]["ok"] is False
        and "401" in health["providers"]["elevenlabs"]["detail"]
    )
    assert health["providers"]["local"]["ok"] is True
    assert health["queue"] == {"queued": 0, "max": 200} and health["worker"] == {"inProcess": False}
