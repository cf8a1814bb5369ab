"""The compiled pricing configuration: routes, their price rules and the tokens they accept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from shared.networks import v1_name

from .money import USD
from .params import ParamSpec
from .paths import PathPattern


class SettlementPolicy(StrEnum):
    AFTER = "after"  # verify, run the handler, settle only a response below 400
    BEFORE = "before"  # settle, then run the handler
    # Verify and hold: the handler takes charge of the payment (PaymentHold.take) and settles or releases
    # it later, e.g. when the job it started ends. Not offered in pricing files: a plain handler would
    # leave the payment held forever.
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class TokenSpec:
    symbol: str
    network: str  # CAIP-2
    chain_id: int
    address: str  # checksummed
    name: str  # EIP-712 domain name
    version: str  # EIP-712 domain version
    decimals: int
    usd: bool  # a USD stablecoin: dollar prices convert 1:1

    @property
    def v1_network(self) -> str | None:
        return v1_name(self.chain_id)


@dataclass(frozen=True, slots=True)
class AcceptOption:
    token: TokenSpec
    pay_to: str  # checksummed


@dataclass(frozen=True, slots=True)
class Factor:
    """Multiplies the running price: by a numeric parameter's value, or by `table[value]` of any parameter."""

    param: str
    table: Mapping[str, Decimal] | None = None


@dataclass(frozen=True, slots=True)
class PriceRule:
    """price = max(minimum, base × factors… × (1 + markup_percent/100) + markup), in `unit`."""

    unit: str  # USD, or the symbol of the token whose atomic units the amounts are in
    base: Decimal
    factors: tuple[Factor, ...] = ()
    markup_percent: Decimal = Decimal(0)
    markup: Decimal = Decimal(0)
    minimum: Decimal | None = None

    @property
    def dynamic(self) -> bool:
        return bool(self.factors)

    @property
    def is_usd(self) -> bool:
        return self.unit == USD


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # upper case, or "*" for any method
    pattern: PathPattern
    price: PriceRule
    accepts: tuple[AcceptOption, ...]
    params: tuple[ParamSpec, ...] = ()
    description: str = ""
    mime_type: str = "application/json"
    max_timeout_seconds: int = 300
    settlement: SettlementPolicy = SettlementPolicy.AFTER
    output_schema: Mapping[str, object] | None = None

    @property
    def key(self) -> str:
        """Identifies the route in challenges; stable as long as the file's method and path are."""
        return f"{self.method} {self.pattern.pattern}"

    @property
    def reads_body(self) -> bool:
        return any(p.source == "body" for p in self.params)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    path_params: dict[str, str]


@dataclass(frozen=True, slots=True)
class PricingConfig:
    routes: tuple[Route, ...]
    tokens: tuple[TokenSpec, ...] = field(default=())

    def match(self, method: str, path: str) -> RouteMatch | None:
        """First route in file order whose method and pattern match. CORS preflights are never priced; HEAD
        is priced like GET, since it runs the same handler (the work) and only drops the body."""
        method = method.upper()
        if method == "OPTIONS":
            return None
        for route in self.routes:
            if route.method not in ("*", method) and not (route.method == "GET" and method == "HEAD"):
                continue
            found = route.pattern.match(path)
            if found is not None:
                return RouteMatch(route, found)
        return None

    def by_key(self, key: str) -> Route | None:
        return next((r for r in self.routes if r.key == key), None)
