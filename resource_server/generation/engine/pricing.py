"""Tool prices: the sum of the step components plus a markup. Pure.

The arithmetic is the resource server's (resource_server/pricing/money.py): every operation runs in its
exact context, which raises instead of rounding, and the only rounding is the final ceiling of the total
to the token's atomic unit (`to_atomic`). So the seller never undercharges by a rounding error, the lines
always add up (sum(lines) + markup == total), and a tool quote and the x402 amount charged for it are
computed by one implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ...pricing.money import exact, to_atomic

USDC_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class StepPrice:
    """A step's price: ``fixed`` per run plus ``per_second`` of requested output duration."""

    fixed: Decimal = Decimal(0)
    per_second: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.fixed < 0 or self.per_second < 0:
            raise ValueError("step prices cannot be negative")

    def amount(self, duration_seconds: Decimal) -> Decimal:
        with exact():
            return self.fixed + self.per_second * duration_seconds


@dataclass(frozen=True, slots=True)
class PriceLine:
    step: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class PriceBreakdown:
    lines: tuple[PriceLine, ...]
    subtotal: Decimal
    markup_rate: Decimal
    markup: Decimal  # total - subtotal: the rate's share plus the rounding up to the atomic unit
    total: Decimal

    def to_json(self) -> dict[str, Any]:
        # Strings, not floats: JSON numbers would lose the exactness this module exists for.
        return {
            "lines": [{"step": line.step, "amount": str(line.amount)} for line in self.lines],
            "subtotal": str(self.subtotal),
            "markup_rate": str(self.markup_rate),
            "markup": str(self.markup),
            "total": str(self.total),
        }

    def atomic_total(self, decimals: int = USDC_DECIMALS) -> int:
        """The total in a token's smallest units (USDC: 6 decimals)."""
        scaled, atomic = to_atomic(self.total, decimals)
        if scaled != atomic:
            raise ValueError(f"total {self.total} is finer than {decimals} decimals")
        return atomic


def price_breakdown(
    components: Sequence[tuple[str, StepPrice]],
    *,
    duration_seconds: Decimal,
    markup_rate: Decimal,
    decimals: int = USDC_DECIMALS,
) -> PriceBreakdown:
    """The price of one run, its total rounded up to ``decimals`` (the charged token's atomic unit)."""
    if markup_rate < 0:
        raise ValueError("markup rate cannot be negative")
    if duration_seconds < 0:
        raise ValueError("duration cannot be negative")
    lines = tuple(PriceLine(name, price.amount(duration_seconds)) for name, price in components)
    with exact():
        subtotal = sum((line.amount for line in lines), Decimal(0))
        exact_total = subtotal * (1 + markup_rate)
    _, atomic = to_atomic(exact_total, decimals)
    with exact():
        # scaleb keeps the quantum as the exponent: 1000 atomic -> Decimal("0.001000").
        total = Decimal(atomic).scaleb(-decimals)
        return PriceBreakdown(lines, subtotal, markup_rate, total - subtotal, total)
