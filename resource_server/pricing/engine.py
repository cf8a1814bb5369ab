"""The price of one request: the route's rule applied to validated parameters, exactly, with a breakdown.

Each accepted token gets its own amount, rounded UP to the token's atomic unit (never below the price)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, Inexact, InvalidOperation, Rounded
from typing import Any

from .model import AcceptOption, Route
from .money import ceil_units, exact, format_decimal, to_atomic
from .params import ParamValue, canonical_json, json_value, params_hash


class PricingError(ValueError):
    """The rule cannot price these parameters (zero price, or an amount beyond exact arithmetic)."""


@dataclass(frozen=True, slots=True)
class Step:
    param: str
    value: ParamValue
    multiplier: Decimal
    subtotal: Decimal


@dataclass(frozen=True, slots=True)
class TokenAmount:
    option: AcceptOption
    exact: Decimal  # in atomic units, before rounding
    atomic: int  # what is charged

    @property
    def rounded_up(self) -> bool:
        return self.exact != self.atomic


@dataclass(frozen=True, slots=True)
class Quote:
    route: Route
    params: Mapping[str, ParamValue]
    params_hash: str
    base: Decimal
    steps: tuple[Step, ...]
    after_factors: Decimal
    markup_percent: Decimal
    markup: Decimal
    total: Decimal  # in route.price.unit, exact
    amounts: tuple[TokenAmount, ...]

    @property
    def unit(self) -> str:
        return self.route.price.unit

    def canonical_params(self) -> bytes:
        return canonical_json(self.params)

    def breakdown(self) -> dict[str, Any]:
        """JSON for /quote and the audit trail; decimals as strings so nothing passes through a float."""
        return {
            "unit": self.unit,
            "base": format_decimal(self.base),
            "factors": [
                {
                    "param": s.param,
                    "value": json_value(s.value),
                    "multiplier": format_decimal(s.multiplier),
                    "subtotal": format_decimal(s.subtotal),
                }
                for s in self.steps
            ],
            "markupPercent": format_decimal(self.markup_percent),
            "markup": format_decimal(self.markup),
            "total": format_decimal(self.total),
            "amounts": [
                {
                    "network": a.option.token.network,
                    "asset": a.option.token.address,
                    "symbol": a.option.token.symbol,
                    "decimals": a.option.token.decimals,
                    "payTo": a.option.pay_to,
                    "exact": format_decimal(a.exact),
                    "amount": str(a.atomic),
                    "roundedUp": a.rounded_up,
                }
                for a in self.amounts
            ],
        }


def quote(route: Route, params: Mapping[str, ParamValue]) -> Quote:
    rule = route.price
    steps: list[Step] = []
    try:
        with exact():
            running = rule.base
            for factor in rule.factors:
                value = params.get(factor.param)
                if value is None:  # the loader refuses such rules; one built in code may not be checked
                    raise PricingError(f"no value for {factor.param}, which the price is multiplied by")
                if factor.table is not None:
                    multiplier = factor.table[str(value).lower() if isinstance(value, bool) else str(value)]
                else:
                    assert isinstance(value, int | Decimal) and not isinstance(value, bool)
                    multiplier = Decimal(value)
                running = running * multiplier
                steps.append(Step(factor.param, value, multiplier, running))
            after_factors = running
            total = after_factors + after_factors * rule.markup_percent / 100 + rule.markup
            if rule.minimum is not None and total < rule.minimum:
                total = rule.minimum
    except (Inexact, Rounded, InvalidOperation) as exc:
        raise PricingError(f"the price for these parameters is beyond exact arithmetic ({exc!r})") from None
    amounts = tuple(_amount(option, total, route) for option in route.accepts)
    if total <= 0 or any(a.atomic <= 0 for a in amounts):
        raise PricingError("these parameters price the request at zero; nothing can be charged")
    return Quote(
        route=route,
        params=dict(params),
        params_hash=params_hash(params),
        base=rule.base,
        steps=tuple(steps),
        after_factors=after_factors,
        markup_percent=rule.markup_percent,
        markup=rule.markup,
        total=total,
        amounts=amounts,
    )


def _amount(option: AcceptOption, total: Decimal, route: Route) -> TokenAmount:
    if route.price.is_usd:
        scaled, atomic = to_atomic(total, option.token.decimals)
        return TokenAmount(option, scaled, atomic)
    return TokenAmount(option, total, ceil_units(total))
