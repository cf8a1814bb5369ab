"""The local prompt refiner: tidies a prompt and makes the musical intent explicit. Pure, deterministic.

It adds what the synthesizer derived (key, tempo, mood), so the refined prompt tells a remote provider
the same thing the local fallback would play."""

from __future__ import annotations

import re

from .composition import analyze

MAX_REFINED_CHARS = 600
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def refine_locally(prompt: str) -> str:
    text = " ".join(_CONTROL.sub(" ", prompt).split()).strip(" ,.;")
    if not text:
        return text
    comp = analyze(text)
    lowered = text.lower()
    extras: list[str] = []
    if "bpm" not in lowered:
        extras.append(f"{comp.tempo_bpm} bpm")
    if "major" not in lowered and "minor" not in lowered:
        extras.append(comp.key_name)
    refined = ", ".join([text, *extras])
    return refined[:MAX_REFINED_CHARS]


class LocalRefiner:
    @property
    def name(self) -> str:
        return "local"

    async def refine(self, prompt: str) -> str:
        return refine_locally(prompt)
