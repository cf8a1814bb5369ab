"""The facilitator's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class FacilitatorMetrics:
    def __init__(self, network_names: dict[int, str] | None = None) -> None:
        self.network_names = network_names or {}  # chain id -> the configured CAIP-2 name, for labels
        self.registry = CollectorRegistry()
        r = self.registry
        self.verify_total = Counter(
            "x402_verify_total", "Verify requests", ["network", "outcome"], registry=r
        )
        self.verify_seconds = Histogram(
            "x402_verify_seconds",
            "Verify latency",
            ["network", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.settle_total = Counter(
            "x402_settle_total", "Settle requests", ["network", "outcome"], registry=r
        )
        self.settle_seconds = Histogram(
            "x402_settle_seconds",
            "Settle latency",
            ["network", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_settlements = Gauge(
            "x402_pending_settlements", "Settlements in flight (ledger)", registry=r
        )
        self.signer_balance_wei = Gauge(
            "x402_signer_balance_wei", "Signer native balance", ["network", "signer"], registry=r
        )
        self.signer_nonce = Gauge(
            "x402_signer_nonce", "Signer pending nonce on chain", ["network", "signer"], registry=r
        )
        self.transaction_settlements = Histogram(
            "x402_settlement_transaction_settlements",
            "Settlements carried per stored settlement transaction (1 alone, more in a batch)",
            ["network"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 300),
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "x402_rpc_seconds",
            "JSON-RPC latency",
            ["endpoint", "method", "ok"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe_transaction(self, chain_id: int, settlements: int) -> None:
        self.transaction_settlements.labels(self.network_names.get(chain_id, str(chain_id))).observe(
            settlements
        )

    def observe_rpc(self, endpoint: str, method: str, seconds: float, ok: bool) -> None:
        # The endpoint's host only: URLs may carry API keys in their path or query.
        host = endpoint.split("//", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        self.rpc_seconds.labels(host, method, "true" if ok else "false").observe(seconds)
