"""Prompt refinement through an OpenAI-compatible chat model. Off unless configured.

Refinement is an improvement, never a requirement: any failure falls back to the local refiner, so an
outage of the language model cannot fail a paid job."""

from __future__ import annotations

import httpx
import orjson
import structlog

from . import openai_api as api
from .refine_local import MAX_REFINED_CHARS, refine_locally

log = structlog.get_logger(__name__)


class OpenAIRefiner:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        model: str,
        timeout_seconds: float = 20.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds, connect=5.0))

    @property
    def name(self) -> str:
        return "openai"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def refine(self, prompt: str) -> str:
        try:
            resp = await self._http.post(
                self.base_url + api.COMPLETIONS_PATH,
                json=api.completion_body(self.model, prompt),
                headers={"authorization": f"Bearer {self.api_key}"},
            )
            answer = orjson.loads(resp.content)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            log.warning("prompt_refiner_unavailable", error=f"{type(exc).__name__}: {exc}")
            return refine_locally(prompt)
        text = api.completion_text(answer) if resp.status_code == 200 else None
        if text is None:
            log.warning("prompt_refiner_failed", status=resp.status_code, error=api.error_message(answer))
            return refine_locally(prompt)
        return text[:MAX_REFINED_CHARS]
