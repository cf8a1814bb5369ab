"""Prometheus metrics of the generation stack, in a registry the API layer can expose or merge."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.prompt_rewrites = Counter(
            "generation_prompt_rewrites_total",
            "Prompts rewritten to a provider-safe form after a terms rejection",
            ["provider", "source"],  # source: provider_suggestion | local_rewrite
            registry=r,
        )
        self.provider_fallbacks = Counter(
            "generation_provider_fallbacks_total",
            "Requests handed to the next provider after this one failed",
            ["provider", "category"],
            registry=r,
        )
        self.provider_requests = Counter(
            "generation_provider_requests_total", "Provider calls", ["provider", "outcome"], registry=r
        )
        self.jobs_finished = Counter(
            "generation_jobs_finished_total",
            "Jobs that reached a final status",
            ["tool", "status"],
            registry=r,
        )
        self.step_retries = Counter(
            "generation_step_retries_total",
            "Step retries after transient errors",
            ["tool", "step"],
            registry=r,
        )
        self.final_hook_failures = Counter(
            "generation_final_hook_failures_total", "on_final callbacks that raised", registry=r
        )
        self.webhook_attempts = Counter(
            "generation_webhook_attempts_total", "Webhook delivery attempts", ["outcome"], registry=r
        )
