"""Exact money arithmetic: US dollars ("$0.01") or atomic units of a named token, as Decimals.

Every operation runs in a context that traps rounding, so a price is either computed exactly or the
computation fails; the only rounding anywhere is the final, explicit ceiling to a token's atomic unit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)

USD = "USD"

# Plain positional decimals only: exponents ("1e3") and signs are refused so a typo cannot become a price.
_USD = re.compile(r"\$(?P<amount>[0-9]{1,30}(?:\.[0-9]{1,30})?)")
_ATOMIC = re.compile(r"[0-9]{1,78}")
_DECIMAL = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?")

_EXACT = Context(
    prec=120,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded],
)


class MoneyError(ValueError):
    pass


@contextmanager
def exact() -> Iterator[Context]:
    """Decimal arithmetic that raises instead of rounding (decimal.Inexact / decimal.Rounded)."""
    with localcontext(_EXACT) as ctx:
        yield ctx


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal  # dollars when unit is USD, otherwise atomic units of the token `unit`
    unit: str  # USD or a token symbol

    @property
    def is_usd(self) -> bool:
        return self.unit == USD

    def __str__(self) -> str:
        return f"${format_decimal(self.amount)}" if self.is_usd else f"{self.amount} {self.unit} (atomic)"


def parse_money(value: object, *, where: str = "price") -> Money:
    """`"$0.01"` (US dollars) or `{atomic = "2500", token = "USDC"}` (atomic units of a token)."""
    if isinstance(value, str):
        m = _USD.fullmatch(value.strip())
        if m is None:
            raise MoneyError(
                f'{where}: {value!r} is not a dollar amount like "$0.01" '
                '(or use {atomic = "1000", token = "USDC"} for token units)'
            )
        return Money(Decimal(m["amount"]), USD)
    if isinstance(value, dict):
        if set(value) != {"atomic", "token"}:
            raise MoneyError(f"{where}: a token amount has exactly the keys 'atomic' and 'token'")
        atomic, token = value["atomic"], value["token"]
        if isinstance(atomic, int) and not isinstance(atomic, bool):
            atomic = str(atomic)
        if not isinstance(atomic, str) or not _ATOMIC.fullmatch(atomic):
            raise MoneyError(f"{where}: atomic must be a non-negative integer (as a string), got {atomic!r}")
        if not isinstance(token, str) or not token:
            raise MoneyError(f"{where}: token must name a token symbol")
        return Money(Decimal(atomic), token)
    raise MoneyError(f"{where}: expected a dollar string or a {{atomic, token}} table, got {value!r}")


def parse_decimal(value: object, *, where: str) -> Decimal:
    """A non-negative decimal written as a string ("1.5") or an integer; floats are refused (binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value.strip()):
        raise MoneyError(f'{where}: expected a non-negative decimal written as a string, like "1.5"')
    return Decimal(value.strip())


def to_atomic(amount: Decimal, decimals: int) -> tuple[Decimal, int]:
    """(exact atomic amount, amount rounded UP to a whole atomic unit): the payee never gets less."""
    with exact():
        scaled = amount.scaleb(decimals)
    return scaled, int(scaled.to_integral_value(rounding=ROUND_CEILING))


def ceil_units(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def format_decimal(value: Decimal) -> str:
    """Positional notation without exponent or trailing zeros: "0.0119", "12", "0"."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text
