"""An ElevenLabs-compatible music provider over HTTP (httpx). Shapes live in elevenlabs_api."""

from __future__ import annotations

import httpx

from ..engine.tools import ProgressFn
from ..errors import ErrorCategory
from . import elevenlabs_api as api
from .base import Audio, MusicRequest, ProviderError, ProviderHealth

_EXTENSIONS = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/x-wav": "wav"}


class ElevenLabsMusicProvider:
    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = api.DEFAULT_BASE_URL,
        model_id: str = api.DEFAULT_MODEL,
        output_format: str | None = api.DEFAULT_OUTPUT_FORMAT,
        timeout_seconds: float = 300.0,  # music takes a while: the provider answers when it is done
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id
        self.output_format = output_format
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_seconds, connect=10.0))

    @property
    def name(self) -> str:
        return "elevenlabs"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {api.API_KEY_HEADER: self.api_key or "", "accept": "audio/mpeg, application/json"}

    async def generate(self, request: MusicRequest, progress: ProgressFn) -> Audio:
        if not self.api_key:
            raise ProviderError(
                self.name, ErrorCategory.PERMANENT, "no API key configured", code="not_configured"
            )
        if not api.supports_duration(request.duration_seconds):
            raise ProviderError(
                self.name,
                ErrorCategory.PERMANENT,
                f"duration must be {api.MIN_LENGTH_MS // 1000}-{api.MAX_LENGTH_MS // 1000} s",
                code="unsupported_duration",
            )
        await progress(0.05, "waiting for the music provider")
        try:
            resp = await self._http.post(
                self.base_url + api.MUSIC_PATH,
                json=api.music_body(request.prompt, request.duration_seconds, self.model_id),
                params={"output_format": self.output_format} if self.output_format else None,
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            raise ProviderError(
                self.name,
                ErrorCategory.TRANSIENT,
                f"{type(exc).__name__}: {exc}",
                code="provider_unreachable",
            ) from exc
        if resp.status_code != 200:
            error = api.classify_error(resp.status_code, resp.content, resp.headers)
            raise ProviderError(
                self.name,
                error.category,
                error.message,
                code=error.code,
                suggestion=error.suggestion,
                retry_after=error.retry_after,
            )
        media_type = resp.headers.get("content-type", "audio/mpeg").split(";")[0].strip().lower()
        if not resp.content or not media_type.startswith("audio/"):
            raise ProviderError(
                self.name, ErrorCategory.TRANSIENT, f"unexpected answer ({media_type})", code="bad_answer"
            )
        await progress(1.0, "received audio")
        return Audio(resp.content, media_type, _EXTENSIONS.get(media_type, "bin"), self.name)

    async def health(self) -> ProviderHealth:
        if not self.api_key:
            return ProviderHealth(False, True, "no API key configured")
        try:
            resp = await self._http.get(self.base_url + api.HEALTH_PATH, headers=self._headers(), timeout=5.0)
        except httpx.HTTPError as exc:
            return ProviderHealth(False, True, f"unreachable: {type(exc).__name__}")
        if resp.status_code == 200:
            return ProviderHealth(True, False, "ok")
        error = api.classify_error(resp.status_code, resp.content, resp.headers)
        if resp.status_code == 429:
            return ProviderHealth(True, True, f"rate limited: {error.message}")
        return ProviderHealth(False, True, f"HTTP {resp.status_code}: {error.code}")
