"""Tool prices: the sum of the step components plus a markup, in exact Decimal arithmetic. Pure.

Components and markup are computed without rounding (an inexact operation raises); the only rounding is
the final ceiling of the total to the token's smallest unit, so the seller never undercharges by a
rounding error and the lines always add up: sum(lines) + markup == total."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, Inexact, localcontext
from typing import Any

USDC_QUANTUM = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class StepPrice:
    """A step's price: ``fixed`` per run plus ``per_second`` of requested output duration."""

    fixed: Decimal = Decimal(0)
    per_second: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.fixed < 0 or self.per_second < 0:
            raise ValueError("step prices cannot be negative")

    def amount(self, duration_seconds: Decimal) -> Decimal:
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
    markup: Decimal  # total - subtotal: the rate's share plus the rounding up to the quantum
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

    def atomic_total(self, decimals: int = 6) -> int:
        """The total in a token's smallest units (USDC: 6 decimals)."""
        scaled = self.total.scaleb(decimals)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"total {self.total} is finer than {decimals} decimals")
        return int(scaled)


def price_breakdown(
    components: Sequence[tuple[str, StepPrice]],
    *,
    duration_seconds: Decimal,
    markup_rate: Decimal,
    quantum: Decimal = USDC_QUANTUM,
) -> PriceBreakdown:
    if markup_rate < 0:
        raise ValueError("markup rate cannot be negative")
    if duration_seconds < 0:
        raise ValueError("duration cannot be negative")
    with localcontext() as ctx:
        ctx.prec = 80
        ctx.traps[Inexact] = True
        lines = tuple(PriceLine(name, price.amount(duration_seconds)) for name, price in components)
        subtotal = sum((line.amount for line in lines), Decimal(0))
        exact_total = subtotal * (1 + markup_rate)
        ctx.traps[Inexact] = False
        total = exact_total.quantize(quantum, rounding=ROUND_CEILING)
        ctx.traps[Inexact] = True
        return PriceBreakdown(lines, subtotal, markup_rate, total - subtotal, total)
