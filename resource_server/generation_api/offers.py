"""A tool's price as an x402 offer. Pure: the payment terms and a tool in, routes and quotes out.

A generation is sold at POST /generate for the price of its inputs: each request gets a route whose
fixed price is the tool's quote, so the resource server's pricing engine turns it into per-token atomic
amounts exactly as it does for the pricing file's routes. The challenge binds the tool and its priced
inputs (params hash), so a cheap quote cannot pay for expensive inputs.

Payment windows. Under the default `deferred` policy the payment is settled when the job completes, so
the authorization must still be valid then: the offer asks for maxTimeoutSeconds = the tool's longest
job + the settlement margin + a grace for the client's latency (the SDKs sign validBefore = now +
maxTimeoutSeconds), a payment whose validBefore does not cover longest job + margin is refused before
it is verified, and the job's deadline is the longest job, so it ends in time to be settled."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..generation.engine.pricing import PriceBreakdown
from ..generation.engine.tools import Tool
from ..pricing.engine import Quote, quote
from ..pricing.model import AcceptOption, PriceRule, Route, SettlementPolicy
from ..pricing.money import USD
from ..pricing.params import ParamValue
from ..pricing.paths import compile_pattern

GENERATE_PATH = "/generate"
_GENERATE = compile_pattern(GENERATE_PATH)
# Settled on acceptance, the authorization only has to last through the request.
ACCEPT_WINDOW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class PaymentTerms:
    accepts: tuple[AcceptOption, ...]
    settle_margin_seconds: float
    signing_grace_seconds: float
    settle_on_accept: frozenset[str]

    def policy(self, tool: Tool) -> SettlementPolicy:
        return SettlementPolicy.AFTER if tool.name in self.settle_on_accept else SettlementPolicy.DEFERRED

    def deferred(self, tool: Tool) -> bool:
        return self.policy(tool) is SettlementPolicy.DEFERRED

    def required_window(self, tool: Tool) -> float:
        """Seconds of validity a deferred payment must have left when it arrives."""
        return tool.limits.max_job_seconds + self.settle_margin_seconds

    def max_timeout_seconds(self, tool: Tool) -> int:
        if not self.deferred(tool):
            return ACCEPT_WINDOW_SECONDS
        return math.ceil(self.required_window(tool) + self.signing_grace_seconds)

    def route(self, tool: Tool, total: Decimal) -> Route:
        return Route(
            method="POST",
            pattern=_GENERATE,
            price=PriceRule(unit=USD, base=total),
            accepts=self.accepts,
            description=f"{tool.name}: {tool.description}" if tool.description else tool.name,
            mime_type="application/json",
            max_timeout_seconds=self.max_timeout_seconds(tool),
            settlement=self.policy(tool),
        )

    def offer(self, tool: Tool, inputs: Mapping[str, Any]) -> tuple[Quote, PriceBreakdown]:
        """The x402 quote for validated ``inputs`` and the tool's own breakdown. Raises PricingError."""
        breakdown = tool.price(inputs)
        return quote(self.route(tool, breakdown.total), priced_params(tool, inputs)), breakdown


def priced_params(tool: Tool, inputs: Mapping[str, Any]) -> dict[str, ParamValue]:
    """What a challenge binds: the tool and the inputs its price depends on, as canonical values."""
    return {"tool": tool.name, **{k: _canonical(v) for k, v in tool.price_basis(inputs).items()}}


def _canonical(value: Any) -> ParamValue:
    # Numbers as Decimals, so 10, 10.0 and "10" bind alike; floats through str, since Decimal(0.1) would
    # carry binary noise while str(0.1) is what the client wrote.
    if isinstance(value, bool | str | Decimal):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    return str(value)
