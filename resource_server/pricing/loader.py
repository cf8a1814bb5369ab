"""The pricing TOML file (see examples/pricing.toml) read into a checked `PricingConfig`.

The file is validated as a whole at start-up: an unknown key, a token a route cannot be paid in, a dollar
price on a non-dollar token, a token-unit price on tokens of different decimals or a factor naming an
undeclared (or optional, default-less) parameter is an error naming its place, never a surprise at request
time."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.evm.address import InvalidAddress, normalize_address
from shared.networks import UnknownNetwork, caip2, chain_id_of
from shared.tokens import BUILTIN_TOKENS
from shared.x402.codec import describe_validation_error

from .model import AcceptOption, Factor, PriceRule, PricingConfig, Route, SettlementPolicy, TokenSpec
from .money import USD, MoneyError, parse_decimal, parse_money
from .params import ParamError, ParamSource, ParamSpec, ParamType, ParamValue, coerce
from .paths import PatternError, compile_pattern

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "*"})


class PricingConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AcceptSchema(_Strict):
    network: str
    token: str = "USDC"  # a symbol or a token address
    pay_to: str | None = None


class TokenSchema(_Strict):
    symbol: str
    network: str
    address: str
    name: str
    version: str
    decimals: int = Field(default=6, ge=0, le=36)
    usd: bool = False


class ParamSchema(_Strict):
    type: ParamType
    in_: ParamSource | None = Field(default=None, alias="in")
    required: bool | None = None
    default: Any = None
    min: Any = None
    max: Any = None
    values: list[str] = Field(default_factory=list)
    max_length: int = Field(default=256, ge=1, le=65536)
    description: str = ""


class FactorSchema(_Strict):
    param: str
    table: dict[str, Any] | None = None


class DynamicPriceSchema(_Strict):
    base: Any
    factors: list[FactorSchema] = Field(default_factory=list)
    markup_percent: Any = "0"
    markup: Any = None
    minimum: Any = None


class RouteSchema(_Strict):
    method: str = "GET"
    path: str
    price: str | dict[str, Any]
    params: dict[str, ParamSchema] = Field(default_factory=dict)
    accepts: list[AcceptSchema] | None = None
    pay_to: str | None = None
    description: str = ""
    mime_type: str | None = None
    max_timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    settlement: Literal["after", "before"] | None = None
    output_schema: dict[str, Any] | None = None


class DefaultsSchema(_Strict):
    pay_to: str | None = None
    accepts: list[AcceptSchema] = Field(default_factory=list)
    max_timeout_seconds: int = Field(default=300, ge=1, le=86400)
    mime_type: str = "application/json"
    settlement: Literal["after", "before"] = "after"


class PricingFileSchema(_Strict):
    defaults: DefaultsSchema = Field(default_factory=DefaultsSchema)
    tokens: list[TokenSchema] = Field(default_factory=list)
    routes: list[RouteSchema]


def load_pricing(path: Path, *, default_pay_to: str | None = None) -> PricingConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PricingConfigError(f"cannot read pricing file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PricingConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_pricing(data, default_pay_to=default_pay_to)
    except PricingConfigError as exc:
        raise PricingConfigError(f"{path}: {exc}") from None


def parse_pricing(data: dict[str, Any], *, default_pay_to: str | None = None) -> PricingConfig:
    try:
        schema = PricingFileSchema.model_validate(data)
    except ValidationError as exc:
        raise PricingConfigError(describe_validation_error(exc)) from None
    tokens = _tokens(schema.tokens)
    routes = tuple(
        _route(r, schema.defaults, tokens, default_pay_to, where=f"routes[{i}] ({r.method} {r.path})")
        for i, r in enumerate(schema.routes)
    )
    keys = [r.key for r in routes]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise PricingConfigError(f"route {dup!r} is configured twice")
    return PricingConfig(routes=routes, tokens=tuple(tokens))


def _tokens(extra: list[TokenSchema]) -> list[TokenSpec]:
    out = [
        TokenSpec("USDC", caip2(t.chain_id), t.chain_id, t.address, t.name, t.version, t.decimals, usd=True)
        for t in BUILTIN_TOKENS
    ]
    for i, t in enumerate(extra):
        where = f"tokens[{i}]"
        chain_id = _chain_id(t.network, where)
        spec = TokenSpec(
            t.symbol,
            caip2(chain_id),
            chain_id,
            _address(t.address, where),
            t.name,
            t.version,
            t.decimals,
            t.usd,
        )
        # A file entry for a built-in token replaces it (e.g. to declare a different EIP-712 name).
        out = [o for o in out if (o.chain_id, o.address) != (spec.chain_id, spec.address)]
        out.append(spec)
    return out


def _route(
    r: RouteSchema,
    defaults: DefaultsSchema,
    tokens: list[TokenSpec],
    default_pay_to: str | None,
    *,
    where: str,
) -> Route:
    method = r.method.upper()
    if method not in METHODS:
        raise PricingConfigError(f"{where}: method must be one of {', '.join(sorted(METHODS))}")
    try:
        pattern = compile_pattern(r.path)
    except PatternError as exc:
        raise PricingConfigError(f"{where}: {exc}") from None
    params = tuple(
        _param(name, p, pattern.names, method, where=f"{where}.params.{name}") for name, p in r.params.items()
    )
    route_pay_to = r.pay_to or defaults.pay_to or default_pay_to
    accepts = tuple(
        _accept(a, tokens, route_pay_to, where=f"{where}.accepts[{i}]")
        for i, a in enumerate(r.accepts if r.accepts is not None else defaults.accepts)
    )
    if not accepts:
        raise PricingConfigError(f"{where}: no accepted network/token (set accepts here or in [defaults])")
    price = _price(r.price, {p.name: p for p in params}, where=f"{where}.price")
    for option in accepts:
        if price.is_usd and not option.token.usd:
            raise PricingConfigError(
                f"{where}: a dollar price needs USD stablecoins; {option.token.symbol} on "
                f"{option.token.network} is not one (declare usd = true in [[tokens]] if it is)"
            )
        if not price.is_usd and option.token.symbol != price.unit:
            raise PricingConfigError(
                f"{where}: the price is in {price.unit} units but the route accepts "
                f"{option.token.symbol} on {option.token.network}"
            )
    decimals = {o.token.decimals for o in accepts}
    if not price.is_usd and len(decimals) > 1:
        # The same atomic amount is charged in each token: one symbol with several decimals (USDC with 6
        # on one chain, 18 on another) would cost a trillionth as much in one of them.
        listed = ", ".join(f"{o.token.network} ({o.token.decimals})" for o in accepts)
        raise PricingConfigError(
            f"{where}: a price in {price.unit} units is charged unchanged in every accepted token, but they "
            f"have different decimals: {listed}; price it in dollars or give each its own route"
        )
    return Route(
        method=method,
        pattern=pattern,
        price=price,
        accepts=accepts,
        params=params,
        description=r.description,
        mime_type=r.mime_type or defaults.mime_type,
        max_timeout_seconds=r.max_timeout_seconds or defaults.max_timeout_seconds,
        settlement=SettlementPolicy(r.settlement or defaults.settlement),
        output_schema=r.output_schema,
    )


def _accept(a: AcceptSchema, tokens: list[TokenSpec], pay_to: str | None, *, where: str) -> AcceptOption:
    chain_id = _chain_id(a.network, where)
    on_chain = [t for t in tokens if t.chain_id == chain_id]
    wanted = a.token.lower()
    found = [t for t in on_chain if t.address.lower() == wanted or t.symbol.lower() == wanted]
    if not found:
        known = ", ".join(sorted({t.symbol for t in on_chain})) or "none"
        raise PricingConfigError(
            f"{where}: no token {a.token!r} on {a.network} (known there: {known}; add it under [[tokens]])"
        )
    if len(found) > 1:
        raise PricingConfigError(f"{where}: {a.token!r} is ambiguous on {a.network}; name it by address")
    target = a.pay_to or pay_to
    if not target:
        raise PricingConfigError(f"{where}: no pay_to (set it on the route, in [defaults] or X402_RS_PAY_TO)")
    return AcceptOption(found[0], _address(target, f"{where}.pay_to"))


def _param(name: str, p: ParamSchema, path_names: tuple[str, ...], method: str, *, where: str) -> ParamSpec:
    if not name.isidentifier():
        raise PricingConfigError(f"{where}: parameter names must be identifiers")
    if p.in_ is not None:
        source = p.in_
    elif name in path_names:
        source = ParamSource.PATH
    else:
        source = ParamSource.BODY if method in ("POST", "PUT", "PATCH") else ParamSource.QUERY
    if source is ParamSource.PATH and name not in path_names:
        raise PricingConfigError(f"{where}: in = 'path' but the path has no {{{name}}}")
    if p.type is ParamType.ENUM and not p.values:
        raise PricingConfigError(f"{where}: an enum needs values")
    if p.values and p.type is not ParamType.ENUM:
        raise PricingConfigError(f"{where}: values only apply to type = 'enum'")
    bounds_ok = p.type in (ParamType.INTEGER, ParamType.NUMBER)
    if (p.min is not None or p.max is not None) and not bounds_ok:
        raise PricingConfigError(f"{where}: min/max only apply to integer and number parameters")
    try:
        minimum = _signed_decimal(p.min, f"{where}.min") if p.min is not None else None
        maximum = _signed_decimal(p.max, f"{where}.max") if p.max is not None else None
    except MoneyError as exc:
        raise PricingConfigError(str(exc)) from None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise PricingConfigError(f"{where}: min is above max")
    spec = ParamSpec(
        name=name,
        type=p.type,
        source=source,
        required=p.required if p.required is not None else p.default is None,
        minimum=minimum,
        maximum=maximum,
        values=tuple(p.values),
        max_length=p.max_length,
        description=p.description,
    )
    if source is ParamSource.PATH and not spec.required:
        raise PricingConfigError(f"{where}: a path parameter is always present; it cannot be optional")
    default: ParamValue | None = None
    if p.default is not None:
        raw = str(p.default) if isinstance(p.default, float) else p.default
        try:
            default = coerce(spec, raw)
        except ParamError as exc:
            raise PricingConfigError(f"{where}.default: {exc.message}") from None
    return replace(spec, default=default)


def _signed_decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        value = str(value)
    negative = isinstance(value, str) and value.strip().startswith("-")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return -parse_decimal(-value, where=where)
    magnitude = parse_decimal(value.strip()[1:] if negative else value, where=where)
    return -magnitude if negative else magnitude


def _price(value: str | dict[str, Any], params: dict[str, ParamSpec], *, where: str) -> PriceRule:
    try:
        if isinstance(value, str) or (isinstance(value, dict) and "atomic" in value):
            money = parse_money(value, where=where)
            if money.amount <= 0:
                raise PricingConfigError(
                    f"{where}: a fixed price must be above zero (leave free routes unpriced)"
                )
            return PriceRule(unit=money.unit, base=money.amount)
        rule = DynamicPriceSchema.model_validate(value)
    except MoneyError as exc:
        raise PricingConfigError(str(exc)) from None
    except ValidationError as exc:
        raise PricingConfigError(f"{where}: {describe_validation_error(exc)}") from None
    try:
        base = parse_money(rule.base, where=f"{where}.base")
        markup = parse_money(rule.markup, where=f"{where}.markup") if rule.markup is not None else None
        minimum = parse_money(rule.minimum, where=f"{where}.minimum") if rule.minimum is not None else None
        percent = parse_decimal(rule.markup_percent, where=f"{where}.markup_percent")
    except MoneyError as exc:
        raise PricingConfigError(str(exc)) from None
    for extra in (markup, minimum):
        if extra is not None and extra.unit != base.unit:
            raise PricingConfigError(f"{where}: base, markup and minimum must be in the same unit")
    factors = tuple(_factor(f, params, where=f"{where}.factors[{i}]") for i, f in enumerate(rule.factors))
    return PriceRule(
        unit=base.unit,
        base=base.amount,
        factors=factors,
        markup_percent=percent,
        markup=markup.amount if markup else Decimal(0),
        minimum=minimum.amount if minimum else None,
    )


def _factor(f: FactorSchema, params: dict[str, ParamSpec], *, where: str) -> Factor:
    spec = params.get(f.param)
    if spec is None:
        raise PricingConfigError(f"{where}: parameter {f.param!r} is not declared under params")
    if not spec.required and spec.default is None:
        # A request without it would have nothing to multiply by.
        raise PricingConfigError(f"{where}: {f.param} is optional with no default; a factor needs a value")
    if f.table is None:
        if spec.type not in (ParamType.INTEGER, ParamType.NUMBER):
            raise PricingConfigError(f"{where}: {f.param} is not numeric, so it needs a table")
        if spec.minimum is None or spec.minimum < 0:
            raise PricingConfigError(
                f"{where}: a multiplying parameter needs min >= 0 (a price cannot go negative)"
            )
        return Factor(f.param)
    if spec.type is ParamType.ENUM:
        keys = set(spec.values)
    elif spec.type is ParamType.BOOLEAN:
        keys = {"true", "false"}
    else:
        raise PricingConfigError(f"{where}: tables apply to enum and boolean parameters")
    if set(f.table) != keys:
        raise PricingConfigError(f"{where}: the table must have exactly the keys {sorted(keys)}")
    try:
        table = {k: parse_decimal(v, where=f"{where}.table.{k}") for k, v in f.table.items()}
    except MoneyError as exc:
        raise PricingConfigError(str(exc)) from None
    return Factor(f.param, table)


def _chain_id(network: str, where: str) -> int:
    try:
        return chain_id_of(network)
    except UnknownNetwork as exc:
        raise PricingConfigError(f"{where}: {exc}") from None


def _address(value: str, where: str) -> str:
    try:
        return normalize_address(value)
    except InvalidAddress as exc:
        raise PricingConfigError(f"{where}: {exc}") from None


__all__ = ["USD", "PricingConfigError", "load_pricing", "parse_pricing"]
