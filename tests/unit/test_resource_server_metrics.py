"""The resource server's metrics (audit entries to counters, one exposition with the generation stack's),
its reconciler settings, and which routes' abandoned claims the reconciler may resolve."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from resource_server.audit import AuditEntry
from resource_server.config import ResourceServerSettings
from resource_server.generation.metrics import GenerationMetrics
from resource_server.generation_api.endpoint import GenerateEndpoint
from resource_server.metrics import MAX_FACILITATOR_REASONS, ResourceServerMetrics
from resource_server.pricing.loader import parse_pricing
from resource_server.reconciler import RecoverableRoutes

PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def sample(metrics: ResourceServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_audit_entries_become_payment_and_settlement_counts():
    m = ResourceServerMetrics()
    m.issued()
    m.issued(AuditEntry("payment_refused", "c1", detail={"reason": "challenge_expired"}))
    m.recorded(AuditEntry("verified", "c2"))
    m.recorded(AuditEntry("verify_refused", "c3", detail={"facilitator": {"invalidReason": "bad_sig"}}))
    m.recorded(AuditEntry("verify_refused", "c3", detail={}))
    m.recorded(AuditEntry("settled", "c2"))
    m.recorded(AuditEntry("settlement_pending", "c4"))
    m.recorded(AuditEntry("settle_unanswered", "c5"))
    m.recorded(AuditEntry("settle_failed", "c6"), "invalid_exact_evm_transaction_failed")
    m.recorded(AuditEntry("settle_failed", "c7"))
    m.recorded(AuditEntry("released", "c8", detail={"reason": "handler_status", "status": 500}))
    m.recorded(AuditEntry("settlement_deferred", "c9", detail={"owner": "job:1"}))
    m.recorded(AuditEntry("payment_received", "c9"))  # not an outcome
    m.recorded(AuditEntry("payment_refused", "c1", detail={"reason": "x" * 500}))

    assert sample(m, "x402_rs_challenges_issued_total") == 2
    assert sample(m, "x402_rs_payments_total", outcome="challenge_expired") == 1
    assert sample(m, "x402_rs_payments_total", outcome="verified") == 1
    assert sample(m, "x402_rs_payments_total", outcome="bad_sig") == 1
    assert sample(m, "x402_rs_payments_total", outcome="invalid") == 1
    assert sample(m, "x402_rs_payments_total", outcome="x" * 64) == 1  # a facilitator's prose, cut short
    settlements = {
        ("success", ""): 1,
        ("pending", ""): 2,
        ("failed", "invalid_exact_evm_transaction_failed"): 1,
        ("failed", "settlement_failed"): 1,
        ("released", "handler_status"): 1,
        ("deferred", ""): 1,
    }
    for (outcome, reason), expected in settlements.items():
        assert sample(m, "x402_rs_settlements_total", outcome=outcome, reason=reason) == expected


def test_a_facilitator_cannot_grow_the_reason_labels_without_bound():
    m = ResourceServerMetrics()
    for i in range(MAX_FACILITATOR_REASONS + 10):
        reason = f"reason_{i}_with_a_nonce"
        m.recorded(AuditEntry("verify_refused", "c", detail={"facilitator": {"invalidReason": reason}}))
        m.recorded(AuditEntry("settle_failed", "c"), reason)
    m.recorded(
        AuditEntry("verify_refused", "c", detail={"facilitator": {"invalidReason": "reason_0_with_a_nonce"}})
    )
    # The first distinct reasons keep their names (a known one counts on), the rest share one label.
    assert sample(m, "x402_rs_payments_total", outcome="reason_0_with_a_nonce") == 2
    assert sample(m, "x402_rs_payments_total", outcome="other") == 10
    assert sample(m, "x402_rs_settlements_total", outcome="failed", reason="other") == 10
    outcomes = {s.labels["outcome"] for metric in m.payments.collect() for s in metric.samples}
    assert len(outcomes) == MAX_FACILITATOR_REASONS + 1


def test_label_children_are_made_once():
    m = ResourceServerMetrics()
    m.recorded(AuditEntry("verified", "c"))
    m.facilitator_call("verify", "valid", 0.01)
    children = dict(m._children)
    assert len(children) == 2
    m.recorded(AuditEntry("verified", "c"))
    m.facilitator_call("verify", "valid", 0.02)
    assert m._children == children  # same children, none made again
    assert sample(m, "x402_rs_facilitator_seconds_count", endpoint="verify", outcome="valid") == 2


def test_one_exposition_serves_the_generation_metrics_too():
    m = ResourceServerMetrics()
    current: list[GenerationMetrics | None] = [None]
    m.include(lambda: current[0].registry if current[0] is not None else None)
    m.issued()
    text = generate_latest(m.registry).decode()
    assert "x402_rs_challenges_issued_total 1.0" in text and "generation_" not in text  # not started yet

    generation = current[0] = GenerationMetrics()
    generation.jobs_finished.labels("music", "completed").inc()
    text = generate_latest(m.registry).decode()
    assert 'generation_jobs_finished_total{status="completed",tool="music"} 1.0' in text
    # A restart builds a new generation registry: followed, not registered again.
    current[0] = GenerationMetrics()
    text = generate_latest(m.registry).decode()
    assert 'generation_jobs_finished_total{status="completed",tool="music"} 1.0' not in text
    assert text.count("# TYPE x402_rs_challenges_issued_total counter") == 1


def test_reconciler_settings():
    s = ResourceServerSettings()
    assert (s.stuck_verified_after_seconds, s.expired_retention_seconds) == (600.0, 7 * 86400.0)
    assert ResourceServerSettings(expired_retention_seconds=0).expired_retention_seconds == 0
    with pytest.raises(ValidationError):
        ResourceServerSettings(expired_retention_seconds=-1)
    with pytest.raises(ValidationError):
        ResourceServerSettings(stuck_verified_after_seconds=0)


def test_reconciler_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("X402_RS_STUCK_VERIFIED_AFTER_SECONDS", "900")
    monkeypatch.setenv("X402_RS_EXPIRED_RETENTION_SECONDS", "0")
    s = ResourceServerSettings()
    assert (s.stuck_verified_after_seconds, s.expired_retention_seconds) == (900.0, 0.0)


def test_recoverable_routes_follow_each_routes_policy_and_skip_owned_ones():
    pricing = parse_pricing(
        {
            "defaults": {"pay_to": PAY_TO, "accepts": [{"network": "eip155:84532", "token": "USDC"}]},
            "routes": [
                {"path": "/weather", "price": "$0.001"},
                {"path": "/items/{id}", "price": "$0.002", "settlement": "before"},
                {"method": "POST", "path": "/generate", "price": "$0.01"},
            ],
        }
    )
    assert RecoverableRoutes.of(pricing) == RecoverableRoutes(
        settle_first=frozenset({"GET /items/{id}"}),
        settle_after=frozenset({"GET /weather", "POST /generate"}),
    )
    owned = RecoverableRoutes.of(pricing, owned=lambda method, path: (method, path) == ("POST", "/generate"))
    assert owned.settle_after == frozenset({"GET /weather"})
    # A priced endpoint's own challenges: a claim no job took over is resolved once it expired.
    with_endpoint = RecoverableRoutes.of(
        pricing,
        owned=lambda method, path: (method, path) == ("POST", "/generate"),
        endpoint_routes=GenerateEndpoint.route_keys,
    )
    assert with_endpoint.settle_after == frozenset({"GET /weather", "POST /generate"})
