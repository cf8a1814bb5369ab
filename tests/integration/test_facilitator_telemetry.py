"""Operators see what happened: traces nest RPC work under verify/settle, metrics count outcomes."""

import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry.tracing import configure_tracing
from shared.x402 import reasons
from tests.support.payments import paid_request

pytestmark = pytest.mark.integration


async def test_settle_trace_contains_rpc_and_ledger_spans(dev_chain, facilitator):
    exporter = InMemorySpanExporter()
    configure_tracing("x402-facilitator-test", exporter)
    try:
        body = paid_request(dev_chain, dev_chain.new_payer(100_000), 1_000)
        assert (await facilitator.post("/settle", body)).json()["success"] is True
    finally:
        configure_tracing("x402-facilitator-test", "none")
    spans = [json.loads(s.to_json()) for s in exporter.get_finished_spans()]
    settles = [s for s in spans if s["name"] == "x402.settle"]
    assert len(settles) == 1, [s["name"] for s in spans]
    settle = settles[0]
    trace_id = settle["context"]["trace_id"]
    children = {s["name"] for s in spans if s["context"]["trace_id"] == trace_id and s is not settle}
    assert {
        "rpc",
        "db.settlement.insert",
        "db.settlement.store_transactions",
        "db.settlement.confirm_many",
    } <= children
    rpc_methods = {s["attributes"]["rpc.method"] for s in spans if s["name"] == "rpc"}
    assert {"batch", "eth_sendRawTransaction"} <= rpc_methods


async def test_metrics_count_outcomes_by_network(dev_chain, facilitator):
    payer = dev_chain.new_payer(100_000)
    await facilitator.post("/verify", paid_request(dev_chain, payer, 1_000))
    await facilitator.post("/verify", paid_request(dev_chain, dev_chain.new_payer(0), 1_000))
    await facilitator.post("/settle", paid_request(dev_chain, payer, 2_000))
    await facilitator.get("/ready")  # refreshes signer and pending gauges
    text = (await facilitator.get("/metrics")).text
    net = dev_chain.network
    assert f'x402_verify_total{{network="{net}",outcome="valid"}} 1.0' in text
    assert f'x402_verify_total{{network="{net}",outcome="{reasons.INSUFFICIENT_BALANCE}"}} 1.0' in text
    assert f'x402_settle_total{{network="{net}",outcome="success"}} 1.0' in text
    assert "x402_signer_balance_wei{" in text
    assert "x402_pending_settlements 0.0" in text
    assert dev_chain.rpc_url not in text  # RPC hosts only, never full URLs
