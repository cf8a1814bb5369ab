"""The music tool: refine prompt -> generate (provider chain) -> post-process -> store.

Each step's output is what the next one needs and is persisted with the step, so a job resumed on another
worker carries on with the same refined prompt and the same generated audio."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from uuid import UUID

from ..artifacts import ArtifactStore
from ..engine.params import ToolLimits
from ..engine.pricing import StepPrice
from ..engine.states import JobStatus
from ..engine.tools import Step, StepContext, StepOutput, Tool
from ..providers.base import MusicRequest, PromptRefiner
from ..providers.chain import ProviderChain
from .audio_checks import inspect_audio


@dataclass(frozen=True, slots=True)
class MusicPrices:
    refine: StepPrice = field(default_factory=lambda: StepPrice(fixed=Decimal("0.001")))
    generate: StepPrice = field(default_factory=lambda: StepPrice(per_second=Decimal("0.002")))
    postprocess: StepPrice = field(default_factory=lambda: StepPrice(fixed=Decimal("0.0005")))
    store: StepPrice = field(default_factory=lambda: StepPrice(fixed=Decimal("0.0005")))


DEFAULT_LIMITS = ToolLimits(
    max_duration_seconds=120.0,
    min_duration_seconds=1.0,
    max_prompt_chars=1000,
    max_output_bytes=25 * 1024 * 1024,
    expected_seconds=30.0,
    # Longer than the generate step's timeout (900 s would leave a remote provider no retry) is not
    # needed: the fallback chain answers within it, and a longer window ties the payer's funds up.
    max_job_seconds=900.0,
)

DESCRIPTION = (
    "Music from a text prompt: the prompt is refined, rendered by the first available provider (a local "
    "synthesizer when no remote provider is configured), checked and stored as a downloadable file "
    "(WAV from the local synthesizer)."
)


def music_tool(
    *,
    chain: ProviderChain,
    refiner: PromptRefiner,
    artifacts: ArtifactStore,
    limits: ToolLimits = DEFAULT_LIMITS,
    prices: MusicPrices | None = None,
    markup_rate: Decimal = Decimal("0.2"),
    name: str = "music",
) -> Tool:
    prices = prices or MusicPrices()

    async def refine(ctx: StepContext) -> StepOutput:
        original = str(ctx.params["prompt"])
        refined = await refiner.refine(original)
        return {"prompt": refined or original, "original": original, "refiner": refiner.name}

    async def generate(ctx: StepContext) -> StepOutput:
        prompt = str(ctx.outputs["refine"]["prompt"])
        request = MusicRequest(prompt, float(ctx.params["duration_seconds"]))
        result = await chain.generate(request, ctx.report, ctx.notice)
        ref = await artifacts.put(
            ctx.job_id, f"raw.{result.audio.extension}", result.audio.media_type, result.audio.data
        )
        return {
            "artifact_id": str(ref.id),
            "media_type": ref.media_type,
            "extension": result.audio.extension,
            "provider": result.audio.provider,
            "prompt_used": result.prompt_used,
            "attempts": list(result.attempts),
        }

    async def postprocess(ctx: StepContext) -> StepOutput:
        generated = ctx.outputs["generate"]
        data = await artifacts.content(UUID(str(generated["artifact_id"])))
        info = inspect_audio(data, str(generated["media_type"]), max_bytes=ctx.limits.max_output_bytes)
        return {"size": info.size, "sha256": info.sha256, "duration_seconds": info.duration_seconds}

    async def store(ctx: StepContext) -> StepOutput:
        generated, checked = ctx.outputs["generate"], ctx.outputs["postprocess"]
        ref = await artifacts.publish(UUID(str(generated["artifact_id"])), f"{name}.{generated['extension']}")
        await ctx.report(1.0, "stored")
        return {
            "artifacts": [{**ref.to_json(), "duration_seconds": checked["duration_seconds"]}],
            "provider": generated["provider"],
            "prompt_used": generated["prompt_used"],
        }

    return Tool(
        name,
        (
            Step("refine", refine, prices.refine, weight=1, label="refining prompt", timeout_seconds=60),
            Step("generate", generate, prices.generate, weight=8, label="generating", timeout_seconds=900),
            Step("postprocess", postprocess, prices.postprocess, weight=1, label="checking audio"),
            Step("store", store, prices.store, phase=JobStatus.UPLOADING, weight=1, label="storing"),
        ),
        limits=limits,
        markup_rate=markup_rate,
        description=DESCRIPTION,
    )
