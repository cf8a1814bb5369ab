"""Trying providers in order: a terms refusal gets one provider-safe rewrite on the same provider before
moving on; an outage or a misconfigured provider moves on at once. Every rewrite is counted.

When no provider succeeds the most hopeful category wins: transient if any provider was merely down (the
step is retried later), else terms (the prompt itself is the problem), else permanent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from ..engine.tools import NoticeFn, ProgressFn
from ..errors import ErrorCategory
from ..metrics import GenerationMetrics
from .base import Audio, MusicProvider, MusicRequest, ProviderError
from .safe_prompt import safe_rewrite

log = structlog.get_logger(__name__)

PROMPT_ADJUSTED = "prompt_adjusted"


@dataclass(frozen=True, slots=True)
class ChainResult:
    audio: Audio
    prompt_used: str
    attempts: tuple[str, ...]  # "provider: outcome" for each call made, for the step output


class ProviderChain:
    def __init__(self, providers: Sequence[MusicProvider], metrics: GenerationMetrics) -> None:
        if not providers:
            raise ValueError("a provider chain needs at least one provider")
        self.providers = tuple(providers)
        self.metrics = metrics

    async def generate(self, request: MusicRequest, progress: ProgressFn, notice: NoticeFn) -> ChainResult:
        errors: list[ProviderError] = []
        attempts: list[str] = []
        prompt = request.prompt
        for provider in self.providers:
            try:
                audio = await self._call(provider, replace(request, prompt=prompt), progress, attempts)
            except ProviderError as exc:
                if exc.category is not ErrorCategory.TERMS:
                    errors.append(exc)
                    self._fell_back(provider.name, exc)
                    continue
                # One rewrite, on the same provider; a later provider gets the rewritten prompt too, since
                # the original has now been judged unsafe once.
                prompt = exc.suggestion or safe_rewrite(prompt)
                source = "provider_suggestion" if exc.suggestion else "local_rewrite"
                self.metrics.prompt_rewrites.labels(provider.name, source).inc()
                log.info("generation_prompt_rewritten", provider=provider.name, source=source)
                try:
                    audio = await self._call(provider, replace(request, prompt=prompt), progress, attempts)
                except ProviderError as again:
                    errors.append(again)
                    self._fell_back(provider.name, again)
                    continue
            if prompt != request.prompt:
                await notice(
                    PROMPT_ADJUSTED,
                    f"the prompt was adjusted to meet the provider's terms; generated from: {prompt!r}",
                )
            return ChainResult(audio, prompt, tuple(attempts))
        raise _combined(errors)

    async def _call(
        self, provider: MusicProvider, request: MusicRequest, progress: ProgressFn, attempts: list[str]
    ) -> Audio:
        try:
            audio = await provider.generate(request, progress)
        except ProviderError as exc:
            attempts.append(f"{provider.name}: {exc.code}")
            self.metrics.provider_requests.labels(provider.name, exc.category.value).inc()
            raise
        except Exception as exc:
            # An unclassified fault in a provider is its problem, not the job's: treat it as an outage.
            attempts.append(f"{provider.name}: error")
            self.metrics.provider_requests.labels(provider.name, "error").inc()
            raise ProviderError(
                provider.name, ErrorCategory.TRANSIENT, f"{type(exc).__name__}: {exc}", code="provider_error"
            ) from exc
        attempts.append(f"{provider.name}: ok")
        self.metrics.provider_requests.labels(provider.name, "ok").inc()
        return audio

    def _fell_back(self, provider: str, exc: ProviderError) -> None:
        self.metrics.provider_fallbacks.labels(provider, exc.category.value).inc()
        log.info(
            "generation_provider_fallback", provider=provider, category=exc.category.value, error=exc.message
        )


def _combined(errors: list[ProviderError]) -> ProviderError:
    for category in (ErrorCategory.TRANSIENT, ErrorCategory.TERMS, ErrorCategory.PERMANENT):
        matching = [e for e in errors if e.category is category]
        if matching:
            first = matching[0]
            summary = "; ".join(e.message for e in errors)
            return ProviderError(
                "providers",
                category,
                f"no provider succeeded ({summary})",
                code=first.code,
                retry_after=first.retry_after,
            )
    raise AssertionError("a failed chain has at least one error")
