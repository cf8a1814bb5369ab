"""OpenTelemetry tracing setup and a small ``span`` helper for verify/settle/RPC/database calls.

Exporters: ``None``/``"none"`` (no-op, the default so nothing leaves the process
unasked), ``"console"`` (spans printed as JSON, for development) and ``"otlp"`` (OTLP over
HTTP, or gRPC if only that exporter is installed; configured by the standard
``OTEL_EXPORTER_OTLP_*`` environment variables).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.util.types import AttributeValue

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TRACER = "x402"

_provider: trace.TracerProvider | None = None
_global_set = False


def configure_tracing(service_name: str, exporter: str | SpanExporter | None) -> trace.TracerProvider:
    """Install the provider used by ``tracer`` and ``span``; calling again replaces it.

    The first call also makes it OpenTelemetry's global provider (OpenTelemetry allows
    that once per process), so third-party instrumentation reports to it as well.
    """
    provider: trace.TracerProvider
    if isinstance(exporter, SpanExporter):  # an exporter object: embedding applications and tests
        sdk = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        sdk.add_span_processor(SimpleSpanProcessor(exporter))
        _install(sdk)
        return sdk
    choice = (exporter or "none").strip().lower()
    if choice == "none":
        provider = trace.NoOpTracerProvider()
    elif choice == "console":
        sdk = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        # Unbatched so spans show up next to the log lines they belong to.
        sdk.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        provider = sdk
    elif choice == "otlp":
        sdk = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        sdk.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        provider = sdk
    else:
        raise ValueError(f"unknown tracing exporter {exporter!r}: use none, console or otlp")

    _install(provider)
    return provider


def _install(provider: trace.TracerProvider) -> None:
    global _provider, _global_set
    shutdown_tracing()
    _provider = provider
    if not _global_set:
        trace.set_tracer_provider(provider)
        _global_set = True


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        pass
    else:
        return OTLPSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )
    except ImportError:
        raise RuntimeError(
            "tracing exporter 'otlp' needs the opentelemetry-exporter-otlp package "
            "(pip install opentelemetry-exporter-otlp), or choose 'console' or 'none'"
        ) from None
    grpc_exporter: SpanExporter = GrpcSpanExporter()
    return grpc_exporter


def shutdown_tracing() -> None:
    """Flush and close the current SDK provider (batched spans would otherwise be lost)."""
    if isinstance(_provider, TracerProvider):
        _provider.shutdown()


def tracer(name: str = DEFAULT_TRACER) -> trace.Tracer:
    """A tracer from the configured provider, or OpenTelemetry's global one before setup."""
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer(name)


class SpanScope:
    """One span, usable as ``with``, ``async with`` or as a decorator of async functions.

    The span is current inside the block, records an exception that escapes it and marks
    itself as failed.
    """

    def __init__(self, name: str, attributes: dict[str, AttributeValue]) -> None:
        self._name = name
        self._attributes = attributes
        self._cm: AbstractContextManager[trace.Span] | None = None

    def __enter__(self) -> trace.Span:
        if _provider is None or isinstance(_provider, trace.NoOpTracerProvider):
            # Tracing off: no context manager at all. Spans sit on every RPC call of the hot path.
            return trace.INVALID_SPAN
        # Resolved on entry, not at creation, so a span built at import time still reports
        # to the provider configured later.
        self._cm = tracer().start_as_current_span(self._name, attributes=self._attributes)
        return self._cm.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._cm is None:
            return
        cm, self._cm = self._cm, None
        cm.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> trace.Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            # A fresh scope per call: one SpanScope cannot be entered twice at once.
            async with SpanScope(self._name, self._attributes):
                return await fn(*args, **kwargs)

        return wrapper


def span(name: str, /, **attrs: AttributeValue | None) -> SpanScope:
    """``async with span("settle", network=net): ...``; attributes that are None are left out."""
    return SpanScope(name, {key: value for key, value in attrs.items() if value is not None})
