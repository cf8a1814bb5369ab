from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.telemetry.logging import REDACTED, configure_logging, get_logger, redact_secrets
from shared.telemetry.metrics import metrics_endpoint, time_block
from shared.telemetry.tracing import configure_tracing, span

PRIVATE_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
BARE_KEY = PRIVATE_KEY[2:]
TX_HASH = "0x" + "ab" * 32
SIGNATURE = "0x" + "12" * 65


def redact(**event: object) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", dict(event)))


# --- redaction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "private_key",
        "PRIVATE-KEY",
        "privateKey",
        "facilitator_private_key",
        "api_key",
        "X-API-Key",
        "authorization",
        "Authorization",
        "password",
        "db_password",
        "client_secret",
        "signature",
        "X-PAYMENT",
        "mnemonic",
    ],
)
def test_secret_named_fields_are_redacted(key: str) -> None:
    assert redact(**{key: "anything at all"})[key] == REDACTED


def test_secret_named_fields_redact_whole_structures() -> None:
    out = redact(headers={"Authorization": "Bearer abc", "accept": "*/*"}, secret={"nested": 1})
    assert out["headers"] == {"Authorization": REDACTED, "accept": "*/*"}
    assert out["secret"] == REDACTED


def test_private_key_shaped_values_are_redacted_anywhere() -> None:
    out = redact(
        event=f"loaded key {PRIVATE_KEY} for signer",
        note=BARE_KEY,
        items=[{"deep": [PRIVATE_KEY]}],
        raw=bytes.fromhex(BARE_KEY),
    )
    flat = json.dumps(out)
    assert BARE_KEY not in flat
    assert out["event"] == f"loaded key {REDACTED} for signer"
    assert out["items"] == [{"deep": [REDACTED]}]
    assert out["raw"] == REDACTED


def test_public_values_stay_readable() -> None:
    address = "0x" + "cd" * 20
    out = redact(
        tx_hash=TX_HASH,
        nonce=TX_HASH,
        payer=address,
        amount=1000,
        ok=True,
        signature_type="eoa",
        password_present=False,
    )
    assert out == {
        "tx_hash": TX_HASH,
        "nonce": TX_HASH,
        "payer": address,
        "amount": 1000,
        "ok": True,
        "signature_type": "eoa",
        "password_present": False,
    }


def test_url_passwords_are_redacted() -> None:
    out = redact(database_url="postgresql://app:hunter2@db:5432/x402", event="connect postgresql://a:b@h/d")
    assert out["database_url"] == f"postgresql://app:{REDACTED}@db:5432/x402"
    assert "hunter2" not in json.dumps(out)
    assert out["event"] == f"connect postgresql://a:{REDACTED}@h/d"


class _Config:
    private_key = PRIVATE_KEY

    def __repr__(self) -> str:
        return f"Config(private_key={self.private_key})"


def test_unknown_objects_are_scrubbed_through_repr() -> None:
    assert BARE_KEY not in str(redact(config=_Config())["config"])


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        structlog.reset_defaults()


def test_logging_pipeline_never_writes_secrets(log_stream: io.StringIO) -> None:
    log = get_logger("test")
    log.info("signer ready", private_key=PRIVATE_KEY, api_key="k-123", tx_hash=TX_HASH)
    logging.getLogger("stdlib.lib").warning("stdlib says %s", PRIVATE_KEY)
    try:
        raise ValueError(f"bad key {PRIVATE_KEY}")
    except ValueError:
        log.exception("failed", signature=SIGNATURE)

    text = log_stream.getvalue()
    for secret in (BARE_KEY, "k-123", SIGNATURE[2:]):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["signer ready", f"stdlib says {REDACTED}", "failed"]
    assert lines[0]["tx_hash"] == TX_HASH
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "test" and "timestamp" in lines[0]
    assert "ValueError" in lines[2]["exception"] and REDACTED in lines[2]["exception"]


def test_logging_level_filters(log_stream: io.StringIO) -> None:
    configure_logging("WARNING", stream=log_stream)
    get_logger("test").info("quiet")
    get_logger("test").warning("loud")
    assert [json.loads(line)["event"] for line in log_stream.getvalue().splitlines()] == ["loud"]


# --- metrics ---------------------------------------------------------------------------


def metrics_client() -> tuple[TestClient, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter("x402_settlements", "Settlements", ["network"], registry=registry)
    counter.labels(network="eip155:84532").inc(3)
    app = Starlette(routes=[Route("/metrics", metrics_endpoint(registry))])
    return TestClient(app), registry


def test_metrics_endpoint_serves_prometheus_text() -> None:
    client, _ = metrics_client()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE x402_settlements_total counter" in response.text
    assert 'x402_settlements_total{network="eip155:84532"} 3.0' in response.text
    # Only this registry: nothing from the process-wide default one.
    assert "python_gc_objects_collected_total" not in response.text


def test_metrics_endpoint_negotiates_openmetrics() -> None:
    client, _ = metrics_client()
    response = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.rstrip().endswith("# EOF")


def test_time_block_observes_with_labels_and_outcome() -> None:
    registry = CollectorRegistry()
    hist = Histogram("op_seconds", "op", ["op", "outcome"], registry=registry)
    with time_block(hist, op="verify", outcome_label="outcome"):
        pass
    with pytest.raises(RuntimeError), time_block(hist, op="verify", outcome_label="outcome"):
        raise RuntimeError("boom")

    def count(outcome: str) -> float | None:
        return registry.get_sample_value("op_seconds_count", {"op": "verify", "outcome": outcome})

    assert count("ok") == 1
    assert count("error") == 1


def test_time_block_without_labels() -> None:
    registry = CollectorRegistry()
    hist = Histogram("plain_seconds", "plain", registry=registry)
    with time_block(hist):
        pass
    assert registry.get_sample_value("plain_seconds_count") == 1


# --- tracing ---------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = configure_tracing("test-service", "console")
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        configure_tracing("test-service", None)


async def test_span_records_attributes_and_errors(spans: InMemorySpanExporter) -> None:
    async with span("verify", network="eip155:84532", payer=None):
        pass

    @span("settle", scheme="exact")
    async def settle() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("rpc down")

    with pytest.raises(RuntimeError):
        await settle()

    finished = {s.name: s for s in spans.get_finished_spans()}
    assert dict(finished["verify"].attributes or {}) == {"network": "eip155:84532"}
    assert finished["verify"].resource.attributes["service.name"] == "test-service"
    assert finished["settle"].status.status_code is StatusCode.ERROR
    assert finished["settle"].events[0].name == "exception"


async def test_noop_tracing_still_runs_the_block() -> None:
    configure_tracing("test-service", "none")
    async with span("anything") as current:
        assert not current.is_recording()


def test_tracing_rejects_unknown_exporter() -> None:
    with pytest.raises(ValueError, match="unknown tracing exporter"):
        configure_tracing("svc", "zipkin")


def test_otlp_without_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(RuntimeError, match="opentelemetry-exporter-otlp"):
        configure_tracing("svc", "otlp")
