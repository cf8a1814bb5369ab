"""The provider interface and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..engine.tools import ProgressFn
from ..errors import ErrorCategory, GenerationError


@dataclass(frozen=True, slots=True)
class MusicRequest:
    prompt: str
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class Audio:
    data: bytes
    media_type: str  # audio/wav, audio/mpeg
    extension: str  # wav, mp3
    provider: str


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """``ok``: requests can be served now. ``degraded``: impaired (down, rate limited, slow), reported
    rather than hidden so readiness shows it while other providers cover."""

    ok: bool
    degraded: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "degraded": self.degraded, "detail": self.detail}


class ProviderError(GenerationError):
    """A classified provider failure; ``suggestion`` is a provider's own safe rewrite of a refused prompt."""

    def __init__(
        self,
        provider: str,
        category: ErrorCategory,
        message: str,
        *,
        code: str | None = None,
        suggestion: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(category, f"{provider}: {message}", code=code, retry_after=retry_after)
        self.provider = provider
        self.suggestion = suggestion


class MusicProvider(Protocol):
    @property
    def name(self) -> str: ...

    async def generate(self, request: MusicRequest, progress: ProgressFn) -> Audio:
        """Raises ProviderError with a category; anything else is treated as a transient provider fault."""
        ...

    async def health(self) -> ProviderHealth: ...


class PromptRefiner(Protocol):
    @property
    def name(self) -> str: ...

    async def refine(self, prompt: str) -> str: ...
