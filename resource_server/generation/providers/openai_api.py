"""OpenAI-compatible chat completions: the wire shapes of the prompt-refinement call. Pure.

POST {base}/v1/chat/completions, Authorization: Bearer <key>, {"model", "messages", ...}; the answer's
text is choices[0].message.content. Errors are {"error": {"message", "type", "code"}}."""

from __future__ import annotations

from typing import Any

COMPLETIONS_PATH = "/v1/chat/completions"

SYSTEM_PROMPT = (
    "You rewrite requests for instrumental music into one concise prompt for a music generation model. "
    "Keep the user's genre, mood, instruments and tempo; add concrete musical detail (instrumentation, "
    "tempo, key or mode, texture). Never name real artists, bands or songs, and never ask for lyrics or "
    "vocals. Answer with the prompt only, under 60 words."
)


def completion_body(
    model: str, prompt: str, *, temperature: float = 0.2, max_tokens: int = 160
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "temperature": temperature,
        "max_tokens": max_tokens,
    }


def completion_text(answer: Any) -> str | None:
    """choices[0].message.content, stripped; None if the answer does not have that shape."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str):
        return None
    text = content.strip().strip('"').strip()
    return text or None


def error_message(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("message") or answer["error"].get("type") or "error")
    return "unexpected answer"
