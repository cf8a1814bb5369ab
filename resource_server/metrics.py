"""The resource server's Prometheus metrics, in a registry of its own (GET /metrics).

Payments and settlements are counted from the audit entries the challenge store writes (`recorded`), so
the counters tell the same story as the audit trail and the payment flow needs no calls of its own. Label
children are cached: the hot path does one dict lookup per count, no registry lookup.

Other registries (the generation stack's) are exposed through the same endpoint with `include`, by a
forwarding collector registered once, so no collector is ever registered twice."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .audit import AuditEntry

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

# Audit events that are settlement outcomes, and their `outcome` label.
_SETTLEMENT_OUTCOMES = {
    "settled": "success",
    "settlement_pending": "pending",
    "settle_unanswered": "pending",  # the answer was lost; reconciled like a pending one
    "settle_failed": "failed",
    "released": "released",
    "settlement_deferred": "deferred",
}
_MAX_LABEL = 64  # reasons come from facilitators: bounded, in case one sends prose
# A facilitator's reasons are its own: ours and the x402 SDKs' known sets are all far below this, while one
# that puts a nonce or a message in its reason would otherwise add a time series per answer.
MAX_FACILITATOR_REASONS = 32
OTHER_REASON = "other"


class _ReasonLabels:
    """Label values for reasons a facilitator sends: the first `limit` distinct ones as they are, the rest
    `other`, so a facilitator cannot grow the metrics without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: Any, default: str) -> str:
        if not value:
            return default
        label = str(value)[:_MAX_LABEL]
        if label in self._seen:
            return label
        if len(self._seen) >= self.limit:
            return OTHER_REASON
        self._seen.add(label)
        return label


def _label(value: Any, default: str) -> str:
    """A label for a reason this server wrote itself (a refusal, a release): a bounded set."""
    return str(value)[:_MAX_LABEL] if value else default


class ResourceServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.challenges_issued = Counter(
            "x402_rs_challenges_issued_total", "Challenges issued (402 answers and quotes)", registry=r
        )
        self.payments = Counter(
            "x402_rs_payments_total",
            "Payments received, by outcome: verified, or the reason it was refused",
            ["outcome"],
            registry=r,
        )
        self.settlements = Counter(
            "x402_rs_settlements_total",
            "Settlement outcomes as recorded (success, pending, failed, released, deferred); a pending one is"
            " counted again when it resolves",
            ["outcome", "reason"],
            registry=r,
        )
        self.facilitator_seconds = Histogram(
            "x402_rs_facilitator_seconds",
            "Facilitator call latency, failover included",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.unsettled = Gauge(
            "x402_rs_unsettled_challenges",
            "Challenges paid but not settled yet, by status (refreshed by the reconciler)",
            ["status"],
            registry=r,
        )
        self.stuck_resolved = Counter(
            "x402_rs_stuck_resolved_total",
            "Challenges found stuck in verified and resolved by the reconciler, by resulting status",
            ["status"],
            registry=r,
        )
        self.challenges_purged = Counter(
            "x402_rs_challenges_purged_total",
            "Expired, never paid challenges deleted by retention",
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # (metric, labels) -> child
        self._facilitator_reason = _ReasonLabels(MAX_FACILITATOR_REASONS)
        self._issued = self.challenges_issued  # unlabelled: no child to look up

    # -- hot path -------------------------------------------------------------------------------------------

    def issued(self, note: AuditEntry | None = None) -> None:
        """A challenge was issued, with `note` (the refusal it answers) written with it."""
        self._issued.inc()
        if note is not None:
            self.recorded(note)

    def recorded(self, entry: AuditEntry, error_reason: str | None = None) -> None:
        """An audit entry was written (with the state change it describes, if any)."""
        event = entry.event
        if event == "verified":
            self._payment("verified")
        elif event == "payment_refused":
            self._payment(_label(entry.detail.get("reason"), "refused"))
        elif event == "verify_refused":
            answer = entry.detail.get("facilitator")
            reason = answer.get("invalidReason") if isinstance(answer, dict) else None
            self._payment(self._facilitator_reason(reason, "invalid"))
        else:
            outcome = _SETTLEMENT_OUTCOMES.get(event)
            if outcome is None:
                return
            if outcome == "failed":
                reason = self._facilitator_reason(error_reason, "settlement_failed")
            elif outcome == "released":
                reason = _label(entry.detail.get("reason"), "")
            else:
                reason = ""
            self._child(self.settlements, outcome, reason).inc()

    def facilitator_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self._child(self.facilitator_seconds, endpoint, outcome).observe(seconds)

    def _payment(self, outcome: str) -> None:
        self._child(self.payments, outcome).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- exposition -----------------------------------------------------------------------------------------

    def include(self, source: Callable[[], CollectorRegistry | None]) -> None:
        """Serves the metrics of the registry `source` returns (None: nothing yet) with ours. Call once per
        source: `source` is asked at every scrape, so a registry rebuilt on restart is followed."""
        self.registry.register(_Forward(source))


class _Forward(Collector):
    """Yields another registry's metrics at collection time. Not name-checked against ours (describe is
    empty), so sources must use their own prefixes (generation_*, not x402_rs_*)."""

    def __init__(self, source: Callable[[], CollectorRegistry | None]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        registry = self._source()
        return registry.collect() if registry is not None else ()

    def describe(self) -> Iterable[Metric]:
        return ()
