"""Validation of the common job inputs (prompt, duration) against a tool's caps. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class InvalidParams(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ToolLimits:
    max_duration_seconds: float = 120.0
    min_duration_seconds: float = 1.0
    max_prompt_chars: int = 2000
    max_output_bytes: int = 50 * 1024 * 1024
    max_active_per_payer: int | None = None  # None: the engine-wide limit applies
    expected_seconds: float = 30.0  # typical wall time of one job; feeds Retry-After estimates
    # Longest a paid job may take from acceptance to its final status, queueing included. A job past it
    # fails as "timeout"; the API sizes a payment's validity window from it, so a job that completes in
    # time can still be settled.
    max_job_seconds: float = 900.0


def validate_prompt_duration(params: Mapping[str, Any], limits: ToolLimits) -> dict[str, Any]:
    """Normalised params ({"prompt": str, "duration_seconds": float, ...extra keys kept}) or InvalidParams."""
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParams("invalid_prompt", "prompt must be a non-empty string")
    prompt = " ".join(prompt.split())
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidParams("prompt_too_long", f"prompt is longer than {limits.max_prompt_chars} characters")
    duration = params.get("duration_seconds")
    # bool is an int subclass; True seconds is a client bug, not a duration.
    if isinstance(duration, bool) or not isinstance(duration, int | float | str | Decimal):
        raise InvalidParams("invalid_duration", "duration_seconds must be a number")
    try:
        seconds = float(duration)
    except ValueError:
        raise InvalidParams("invalid_duration", "duration_seconds must be a number") from None
    if not math.isfinite(seconds):
        raise InvalidParams("invalid_duration", "duration_seconds must be finite")
    if seconds > limits.max_duration_seconds:
        raise InvalidParams(
            "duration_too_long",
            f"duration_seconds is capped at {limits.max_duration_seconds:g} for this tool",
        )
    if seconds < limits.min_duration_seconds:
        raise InvalidParams(
            "duration_too_short", f"duration_seconds must be at least {limits.min_duration_seconds:g}"
        )
    return {**params, "prompt": prompt, "duration_seconds": seconds}


def prompt_duration_schema(limits: ToolLimits) -> dict[str, Any]:
    """The JSON Schema of the inputs validate_prompt_duration accepts, with this tool's caps."""
    return {
        "type": "object",
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": limits.max_prompt_chars,
                "description": "what to generate, in words",
            },
            "duration_seconds": {
                "type": "number",
                "minimum": limits.min_duration_seconds,
                "maximum": limits.max_duration_seconds,
                "description": "length of the output in seconds (the price depends on it)",
            },
        },
        "required": ["prompt", "duration_seconds"],
        "additionalProperties": False,
    }


def duration_of(params: Mapping[str, Any]) -> Decimal:
    """The duration as an exact Decimal for pricing (via str: Decimal(float) would carry binary noise)."""
    value = params.get("duration_seconds", 0)
    return Decimal(str(value))
