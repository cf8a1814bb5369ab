"""Prometheus exposition for Starlette and a timer for histograms.

Each service builds its own ``CollectorRegistry`` (several services can share a process
in the dev stack, and the global default registry would mix their metrics).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving ``registry``: ``Route("/metrics", metrics_endpoint(reg))``.

    Honours the scraper's Accept header (OpenMetrics when asked for, otherwise the
    classic text format 0.0.4), as prometheus_client's own exporters do.
    """

    async def endpoint(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    return endpoint


@contextmanager
def time_block(histogram: Histogram, /, *, outcome_label: str | None = None, **labels: str) -> Iterator[None]:
    """Observe the block's wall time (seconds) into ``histogram`` with ``labels``.

    With ``outcome_label`` the histogram gets that label set to ``ok``, ``error`` (an
    exception escaped) or ``cancelled`` (task cancellation and other BaseExceptions), so
    failures do not skew the latency of successes.
    """
    start = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except Exception:
        outcome = "error"
        raise
    except BaseException:
        outcome = "cancelled"
        raise
    finally:
        elapsed = time.perf_counter() - start
        values = dict(labels)
        if outcome_label is not None:
            values[outcome_label] = outcome
        (histogram.labels(**values) if values else histogram).observe(elapsed)
