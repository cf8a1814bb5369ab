"""Provider readiness for /health: every provider's state, degraded ones shown, never hidden."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .base import MusicProvider, ProviderHealth


async def _checked(provider: MusicProvider, limit: float) -> ProviderHealth:
    try:
        async with asyncio.timeout(limit):
            return await provider.health()
    except TimeoutError:
        return ProviderHealth(False, True, f"health check took over {limit:g}s")
    except Exception as exc:
        return ProviderHealth(False, True, f"health check failed: {type(exc).__name__}")


async def provider_readiness(
    providers: Sequence[MusicProvider], *, limit_seconds: float = 5.0
) -> dict[str, Any]:
    """{"ok": any provider can serve, "degraded": any is impaired, "providers": {name: health}}.

    "ok" with "degraded" means jobs still run (on a fallback) while a provider is down; the API layer
    should answer 200 and show the detail rather than fail readiness."""
    results = await asyncio.gather(*(_checked(p, limit_seconds) for p in providers))
    by_name = {p.name: r.to_json() for p, r in zip(providers, results, strict=True)}
    return {
        "ok": any(r.ok for r in results),
        "degraded": any(r.degraded or not r.ok for r in results),
        "providers": by_name,
    }
