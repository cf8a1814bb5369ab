"""Providers against local fake servers: the local synthesizer, terms rewrites, fallbacks, health, prompt
refinement, and the music tool end to end through the engine."""

from __future__ import annotations

import io
import wave
from uuid import UUID

import pytest

from resource_server.generation.artifacts import ArtifactStore
from resource_server.generation.engine.service import JobRequest
from resource_server.generation.engine.states import JobStatus
from resource_server.generation.errors import ErrorCategory
from resource_server.generation.metrics import GenerationMetrics
from resource_server.generation.providers.base import MusicProvider, MusicRequest, ProviderError
from resource_server.generation.providers.chain import PROMPT_ADJUSTED, ProviderChain
from resource_server.generation.providers.config import ProviderSettings, build_providers, build_refiner
from resource_server.generation.providers.elevenlabs import ElevenLabsMusicProvider
from resource_server.generation.providers.local_audio import LocalAudioProvider
from resource_server.generation.providers.readiness import provider_readiness
from resource_server.generation.providers.refine_local import LocalRefiner, refine_locally
from resource_server.generation.providers.refine_openai import OpenAIRefiner
from resource_server.generation.providers.safe_prompt import safe_rewrite
from resource_server.generation.tools.music import music_tool
from tests.fixtures.generation import FinalLog, make_engine, running_workers, wait_final_handled
from tests.support.fake_providers import FAKE_MP3, Canned

UNSAFE = "a ballad like Famous Singer with lyrics about heartbreak"


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    async def __call__(self, fraction: float, text: str | None = None) -> None:
        self.calls.append((fraction, text))


class Notices:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, code: str, message: str) -> None:
        self.calls.append((code, message))


def eleven(server, fake) -> ElevenLabsMusicProvider:
    return ElevenLabsMusicProvider(api_key=fake.api_key, base_url=server.url)


def rewrites(metrics: GenerationMetrics, provider: str, source: str) -> float:
    value = metrics.registry.get_sample_value(
        "generation_prompt_rewrites_total", {"provider": provider, "source": source}
    )
    return value or 0.0


async def test_local_provider_renders_a_wav_and_reports_progress():
    progress = Progress()
    audio = await LocalAudioProvider(block_seconds=0.5).generate(MusicRequest("calm harp", 2.0), progress)
    assert audio.media_type == "audio/wav" and audio.provider == "local"
    with wave.open(io.BytesIO(audio.data)) as w:
        assert w.getnframes() == 88200
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 5
    assert progress.calls[0][1] is not None and "bpm" in progress.calls[0][1]


async def test_terms_rejection_uses_the_provider_suggestion_once_then_succeeds(fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.bad_prompt(suggestion="melancholic piano ballad, instrumental")
    metrics = GenerationMetrics()
    chain = ProviderChain([eleven(server, fake), LocalAudioProvider()], metrics)
    notices = Notices()

    result = await chain.generate(MusicRequest(UNSAFE, 12), Progress(), notices)

    assert result.audio.provider == "elevenlabs" and result.audio.data == FAKE_MP3
    assert result.audio.media_type == "audio/mpeg"
    assert [r["body"]["prompt"] for r in fake.requests] == [UNSAFE, "melancholic piano ballad, instrumental"]
    assert fake.requests[0]["body"]["music_length_ms"] == 12000
    assert fake.requests[0]["query"] == {"output_format": "mp3_44100_128"}
    assert [code for code, _ in notices.calls] == [PROMPT_ADJUSTED]
    assert rewrites(metrics, "elevenlabs", "provider_suggestion") == 1
    assert result.attempts == ("elevenlabs: bad_prompt", "elevenlabs: ok")


async def test_terms_rejection_without_suggestion_uses_the_local_rewrite(fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.bad_prompt()
    metrics = GenerationMetrics()
    chain = ProviderChain([eleven(server, fake), LocalAudioProvider()], metrics)

    result = await chain.generate(MusicRequest(UNSAFE, 12), Progress(), Notices())

    assert fake.requests[1]["body"]["prompt"] == safe_rewrite(UNSAFE) == "a ballad, instrumental"
    assert result.prompt_used == "a ballad, instrumental" and result.audio.provider == "elevenlabs"
    assert rewrites(metrics, "elevenlabs", "local_rewrite") == 1


async def test_a_second_terms_rejection_falls_back_to_the_next_provider(fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.bad_prompt()
    fake.bad_prompt()
    metrics = GenerationMetrics()
    chain = ProviderChain([eleven(server, fake), LocalAudioProvider()], metrics)
    notices = Notices()

    result = await chain.generate(MusicRequest(UNSAFE, 10), Progress(), notices)

    assert len(fake.requests) == 2  # exactly one rewrite on the refusing provider
    assert result.audio.provider == "local" and result.prompt_used == safe_rewrite(UNSAFE)
    assert [code for code, _ in notices.calls] == [PROMPT_ADJUSTED]
    fallbacks = metrics.registry.get_sample_value(
        "generation_provider_fallbacks_total", {"provider": "elevenlabs", "category": "terms"}
    )
    assert fallbacks == 1


async def test_an_outage_falls_back_to_the_next_provider_without_a_rewrite(fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.outage()
    metrics = GenerationMetrics()
    notices = Notices()
    chain = ProviderChain([eleven(server, fake), LocalAudioProvider()], metrics)

    result = await chain.generate(MusicRequest("calm piano", 10), Progress(), notices)

    assert result.audio.provider == "local" and result.prompt_used == "calm piano"
    assert notices.calls == [] and rewrites(metrics, "elevenlabs", "local_rewrite") == 0
    assert result.attempts == ("elevenlabs: service_unavailable", "local: ok")


async def test_when_every_provider_fails_the_most_hopeful_category_wins(fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.rate_limited(retry_after=3)
    only_remote = ProviderChain([eleven(server, fake)], GenerationMetrics())
    with pytest.raises(ProviderError) as down:
        await only_remote.generate(MusicRequest("calm piano", 10), Progress(), Notices())
    assert down.value.category is ErrorCategory.TRANSIENT and down.value.retry_after == 3

    wrong_key = ElevenLabsMusicProvider(api_key="wrong", base_url=server.url)
    with pytest.raises(ProviderError) as refused:
        await ProviderChain([wrong_key], GenerationMetrics()).generate(
            MusicRequest("x", 10), Progress(), Notices()
        )
    assert refused.value.category is ErrorCategory.PERMANENT


async def test_health_reports_a_degraded_provider_instead_of_hiding_it(fake_elevenlabs):
    fake, server = fake_elevenlabs
    providers: list[MusicProvider] = [eleven(server, fake), LocalAudioProvider()]
    healthy = await provider_readiness(providers)
    assert healthy == {
        "ok": True,
        "degraded": False,
        "providers": {
            "elevenlabs": {"ok": True, "degraded": False, "detail": "ok"},
            "local": {"ok": True, "degraded": False, "detail": "local synthesizer"},
        },
    }
    fake.health_script.append(Canned(503, b'{"detail": {"status": "down", "message": "maintenance"}}'))
    outage = await provider_readiness(providers)
    assert outage["ok"] is True and outage["degraded"] is True  # jobs still run, on the local fallback
    assert (
        outage["providers"]["elevenlabs"]["ok"] is False
        and "503" in outage["providers"]["elevenlabs"]["detail"]
    )
    fake.health_script.append(Canned(429, b'{"detail": "slow down"}'))
    limited = await provider_readiness(providers)
    assert limited["providers"]["elevenlabs"] == {
        "ok": True,
        "degraded": True,
        "detail": "rate limited: slow down",
    }

    unreachable = ElevenLabsMusicProvider(api_key="k", base_url="http://127.0.0.1:9")
    report = await provider_readiness([unreachable])
    assert report["ok"] is False and report["providers"]["elevenlabs"]["degraded"] is True


async def test_openai_refiner_and_its_local_fallback(fake_openai):
    fake, server = fake_openai
    refiner = OpenAIRefiner(api_key=fake.api_key, base_url=server.url, model="tiny-model")
    assert await refiner.refine("chill beats") == fake.reply
    assert fake.requests[0]["model"] == "tiny-model"
    assert fake.requests[0]["messages"][-1] == {"role": "user", "content": "chill beats"}

    fake.script.append(Canned(500, b'{"error": {"message": "overloaded"}}'))
    assert await refiner.refine("chill beats") == refine_locally("chill beats")
    wrong = OpenAIRefiner(api_key="nope", base_url=server.url, model="m")
    assert await wrong.refine("chill beats") == refine_locally("chill beats")


def test_configuration_turns_remote_pieces_on_only_when_configured(monkeypatch):
    for name in ("ELEVENLABS_API_KEY", "GENERATION_REFINER_BASE_URL", "GENERATION_REFINER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    plain = ProviderSettings()
    assert [p.name for p in build_providers(plain)] == ["local"]
    assert isinstance(build_refiner(plain), LocalRefiner)
    monkeypatch.setenv("ELEVENLABS_API_KEY", "k")
    monkeypatch.setenv("ELEVENLABS_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GENERATION_REFINER_BASE_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("GENERATION_REFINER_API_KEY", "k2")
    configured = ProviderSettings()
    providers = build_providers(configured)
    assert [p.name for p in providers] == ["elevenlabs", "local"]
    assert isinstance(providers[0], ElevenLabsMusicProvider) and providers[0].base_url == "http://127.0.0.1:1"
    assert isinstance(build_refiner(configured), OpenAIRefiner)


async def test_music_tool_end_to_end_with_a_terms_rewrite(generation_pool, fake_elevenlabs):
    fake, server = fake_elevenlabs
    fake.bad_prompt(suggestion="sad piano ballad, instrumental")
    metrics = GenerationMetrics()
    artifacts = ArtifactStore(generation_pool)
    tool = music_tool(
        chain=ProviderChain([eleven(server, fake), LocalAudioProvider()], metrics),
        refiner=LocalRefiner(),
        artifacts=artifacts,
    )
    engine = make_engine(generation_pool, [tool])
    hook = FinalLog()
    job = (
        await engine.submit_job(JobRequest("music", {"prompt": UNSAFE, "duration_seconds": 10}, payer="p"))
    ).job
    assert job.price is not None and job.price["total"] == "0.026400"  # (0.001+0.02+0.0005+0.0005) x 1.2

    async with running_workers(engine, on_final=hook):
        done = await wait_final_handled(engine, job.id)

    assert done.status is JobStatus.COMPLETED
    assert [n["code"] for n in done.notices] == [PROMPT_ADJUSTED]
    assert rewrites(metrics, "elevenlabs", "provider_suggestion") == 1
    [artifact] = done.result["artifacts"]
    assert artifact["media_type"] == "audio/mpeg" and artifact["name"] == "music.mp3"
    assert await artifacts.content(UUID(artifact["id"])) == FAKE_MP3
    assert (await artifacts.ref(UUID(artifact["id"]))).published
    assert done.result["provider"] == "elevenlabs"
    assert done.result["prompt_used"] == "sad piano ballad, instrumental"
    # The refined prompt (not the raw one) went to the provider first.
    assert fake.requests[0]["body"]["prompt"] == refine_locally(UNSAFE)
    events = await engine.job_events(job.id)
    assert any(e.kind == "notice" and e.detail["code"] == PROMPT_ADJUSTED for e in events)
    assert [c.status for c in hook.calls] == [JobStatus.COMPLETED]


async def test_music_tool_offline_produces_a_playable_wav(generation_pool):
    artifacts = ArtifactStore(generation_pool)
    tool = music_tool(
        chain=ProviderChain([LocalAudioProvider()], GenerationMetrics()),
        refiner=LocalRefiner(),
        artifacts=artifacts,
    )
    engine = make_engine(generation_pool, [tool])
    job = (
        await engine.submit_job(
            JobRequest("music", {"prompt": "sad rainy night", "duration_seconds": 3}, payer="p")
        )
    ).job

    async with running_workers(engine):
        done = await wait_final_handled(engine, job.id)

    [artifact] = done.result["artifacts"]
    assert artifact["media_type"] == "audio/wav" and artifact["duration_seconds"] == pytest.approx(3.0)
    data = await artifacts.content(UUID(artifact["id"]))
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 44100, 132300)
    progress_events = [e for e in await engine.job_events(job.id) if e.kind == "progress"]
    assert any(e.text.startswith("rendering") for e in progress_events)
    assert done.notices == []
