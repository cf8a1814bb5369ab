"""Checks on produced audio before it is published. Pure."""

from __future__ import annotations

import hashlib
import io
import wave
from dataclasses import dataclass

from ..errors import ErrorCategory, GenerationError


@dataclass(frozen=True, slots=True)
class AudioInfo:
    size: int
    sha256: str
    duration_seconds: float | None  # known for WAV; compressed formats are not decoded here


def inspect_audio(data: bytes, media_type: str, *, max_bytes: int) -> AudioInfo:
    if not data:
        raise GenerationError(ErrorCategory.TRANSIENT, "the provider returned no audio", code="empty_output")
    if len(data) > max_bytes:
        raise GenerationError(
            ErrorCategory.PERMANENT,
            f"output is {len(data)} bytes, over this tool's cap of {max_bytes}",
            code="output_too_large",
        )
    duration: float | None = None
    if media_type in ("audio/wav", "audio/x-wav"):
        try:
            with wave.open(io.BytesIO(data), "rb") as w:
                duration = w.getnframes() / w.getframerate()
        except (wave.Error, EOFError) as exc:
            raise GenerationError(
                ErrorCategory.TRANSIENT, f"unreadable WAV: {exc}", code="bad_output"
            ) from exc
    return AudioInfo(len(data), hashlib.sha256(data).hexdigest(), duration)
