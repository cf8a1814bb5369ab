"""The built-in provider: synthesizes a real WAV from the prompt, offline. The default, and the last
fallback behind remote providers."""

from __future__ import annotations

import asyncio

from ..engine.tools import ProgressFn
from .base import Audio, MusicRequest, ProviderHealth
from .composition import analyze
from .synth import SAMPLE_RATE, Renderer, frames_for, wav_bytes


class LocalAudioProvider:
    def __init__(self, *, block_seconds: float = 1.0) -> None:
        self._block = max(1, round(block_seconds * SAMPLE_RATE))

    @property
    def name(self) -> str:
        return "local"

    async def generate(self, request: MusicRequest, progress: ProgressFn) -> Audio:
        comp = analyze(request.prompt)
        renderer = Renderer(comp, frames_for(request.duration_seconds))
        total = renderer.total_frames
        await progress(0.0, f"composing: {comp.key_name}, {comp.tempo_bpm} bpm")
        blocks: list[bytes] = []
        for start in range(0, total, self._block):
            end = min(total, start + self._block)
            # CPU-bound: off the event loop, one block at a time so progress and cancellation get through.
            blocks.append(await asyncio.to_thread(renderer.render, start, end))
            await progress(end / total, f"rendering {end / SAMPLE_RATE:.0f}/{total / SAMPLE_RATE:.0f} s")
        return Audio(wav_bytes(b"".join(blocks)), "audio/wav", "wav", self.name)

    async def health(self) -> ProviderHealth:
        return ProviderHealth(True, False, "local synthesizer")
