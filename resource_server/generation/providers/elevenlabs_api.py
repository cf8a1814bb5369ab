"""The ElevenLabs music API's wire shapes, in one place so they are easy to correct. Pure.

Modelled on the public music endpoint: POST {base}/v1/music, header xi-api-key, JSON
{"prompt", "music_length_ms", "model_id"}, optional ?output_format=, answering audio bytes (audio/mpeg).
Errors are JSON {"detail": {"status": ..., "message": ..., "data": {...}}} (or FastAPI-style
{"detail": "text" | [validation errors]}); a refused prompt is status "bad_prompt" with an optional
data.prompt_suggestion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ErrorCategory

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
MUSIC_PATH = "/v1/music"
HEALTH_PATH = "/v1/models"  # cheap, authenticated: proves both reachability and the key
API_KEY_HEADER = "xi-api-key"
DEFAULT_MODEL = "music_v1"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
MIN_LENGTH_MS = 10_000
MAX_LENGTH_MS = 300_000
# detail.status values that mean "this content is refused", not "this request is malformed".
TERMS_STATUSES = frozenset({"bad_prompt", "bad_composition_plan", "content_policy_violation"})
SUGGESTION_KEYS = ("prompt_suggestion", "composition_plan_suggestion")


def music_length_ms(duration_seconds: float) -> int:
    return round(duration_seconds * 1000)


def music_body(prompt: str, duration_seconds: float, model_id: str = DEFAULT_MODEL) -> dict[str, Any]:
    return {"prompt": prompt, "music_length_ms": music_length_ms(duration_seconds), "model_id": model_id}


def supports_duration(duration_seconds: float) -> bool:
    return MIN_LENGTH_MS <= music_length_ms(duration_seconds) <= MAX_LENGTH_MS


@dataclass(frozen=True, slots=True)
class ApiError:
    category: ErrorCategory
    code: str
    message: str
    suggestion: str | None = None
    retry_after: float | None = None


def classify_error(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    detail_status, message, data = _detail(body)
    retry_after = _retry_after(headers)
    if detail_status in TERMS_STATUSES:
        suggestion = next(
            (data[k] for k in SUGGESTION_KEYS if isinstance(data.get(k), str) and data[k]), None
        )
        return ApiError(ErrorCategory.TERMS, detail_status, message or "prompt refused", suggestion)
    if status in (401, 403):
        # The key is wrong or out of quota: this provider cannot serve anyone; the chain falls back.
        return ApiError(ErrorCategory.PERMANENT, detail_status or "unauthorized", message or f"HTTP {status}")
    if status == 429 or status == 408 or status >= 500:
        return ApiError(
            ErrorCategory.TRANSIENT,
            detail_status or ("rate_limited" if status == 429 else "provider_unavailable"),
            message or f"HTTP {status}",
            retry_after=retry_after,
        )
    return ApiError(ErrorCategory.PERMANENT, detail_status or f"http_{status}", message or f"HTTP {status}")


def _detail(body: bytes) -> tuple[str | None, str, dict[str, Any]]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace"), {}
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if isinstance(detail, dict):
        data = detail.get("data")
        status = detail.get("status")
        return (
            status if isinstance(status, str) else None,
            str(detail.get("message") or ""),
            data if isinstance(data, dict) else {},
        )
    if isinstance(detail, str):
        return None, detail, {}
    if isinstance(detail, list):  # validation errors
        return (
            "invalid_request",
            "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in detail),
            {},
        )
    return None, "", {}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare here, and the backoff schedule covers it
