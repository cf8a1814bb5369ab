"""Request parameters a price depends on: declared types, bounds and enums, validated into canonical values.

The canonical JSON of the validated parameters is what a challenge binds to (its hash), so two requests that
price the same always hash the same, whatever spelling or source the values came in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import orjson

from .money import format_decimal

_INTEGER = re.compile(r"-?[0-9]{1,30}")
_NUMBER = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?")
# Integers are hashed as JSON numbers (orjson: 64 bits at most) and stored as such; beyond that the request
# is refused as a bad parameter, not failed in the hash.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
DEFAULT_MAX_LENGTH = 256

ParamValue = int | Decimal | bool | str


class ParamType(StrEnum):
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ENUM = "enum"
    STRING = "string"


class ParamSource(StrEnum):
    PATH = "path"
    QUERY = "query"
    BODY = "body"  # a top-level key of a JSON object body


class ParamError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    type: ParamType
    source: ParamSource
    required: bool = True
    default: ParamValue | None = None
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    values: tuple[str, ...] = ()  # enum members
    max_length: int = DEFAULT_MAX_LENGTH
    description: str = ""

    def describe(self) -> dict[str, object]:
        """Machine-readable description for /pricing."""
        out: dict[str, object] = {"type": self.type.value, "in": self.source.value, "required": self.required}
        if self.default is not None:
            out["default"] = json_value(self.default)
        if self.minimum is not None:
            out["minimum"] = format_decimal(self.minimum)
        if self.maximum is not None:
            out["maximum"] = format_decimal(self.maximum)
        if self.values:
            out["enum"] = list(self.values)
        if self.type is ParamType.STRING:
            out["maxLength"] = self.max_length
        if self.description:
            out["description"] = self.description
        return out


def coerce(spec: ParamSpec, value: object) -> ParamValue:
    """One raw value (query/path strings, JSON values with Decimal numbers) to the declared type."""
    match spec.type:
        case ParamType.INTEGER:
            result: ParamValue = _integer(spec, value)
        case ParamType.NUMBER:
            result = _number(spec, value)
        case ParamType.BOOLEAN:
            result = _boolean(spec, value)
        case ParamType.ENUM:
            if not isinstance(value, str) or value not in spec.values:
                raise ParamError(spec.name, f"must be one of {', '.join(spec.values)}; got {_show(value)}")
            result = value
        case ParamType.STRING:
            if not isinstance(value, str):
                raise ParamError(spec.name, f"must be a string; got {_show(value)}")
            if len(value) > spec.max_length:
                raise ParamError(spec.name, f"must be at most {spec.max_length} characters")
            result = value
    if isinstance(result, int | Decimal) and not isinstance(result, bool):
        if spec.minimum is not None and result < spec.minimum:
            raise ParamError(spec.name, f"must be at least {format_decimal(spec.minimum)}; got {result}")
        if spec.maximum is not None and result > spec.maximum:
            raise ParamError(spec.name, f"must be at most {format_decimal(spec.maximum)}; got {result}")
    return result


def _integer(spec: ParamSpec, value: object) -> int:
    if isinstance(value, bool):
        raise ParamError(spec.name, "must be an integer; got a boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        if not _INT_MIN <= value <= _INT_MAX:  # before int(): 1e999999999 would take minutes to convert
            raise ParamError(spec.name, f"must be a 64-bit integer, between {_INT_MIN} and {_INT_MAX}")
        result = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        result = int(value.strip())
    else:
        raise ParamError(spec.name, f"must be an integer; got {_show(value)}")
    if not _INT_MIN <= result <= _INT_MAX:
        raise ParamError(spec.name, f"must be a 64-bit integer, between {_INT_MIN} and {_INT_MAX}")
    return result


def _number(spec: ParamSpec, value: object) -> Decimal:
    if isinstance(value, bool):
        raise ParamError(spec.name, "must be a number; got a boolean")
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return Decimal(value.strip())
    if isinstance(value, int):
        value = Decimal(value)
    if isinstance(value, Decimal) and value.is_finite():
        # JSON numbers held to the digits a string may have: 1e999999999 would take minutes to write out.
        exponent = value.as_tuple().exponent
        if value and (value.adjusted() >= 30 or (isinstance(exponent, int) and exponent < -30)):
            raise ParamError(spec.name, "must have at most 30 digits before and 30 after the decimal point")
        return value
    raise ParamError(spec.name, f"must be a decimal number like 1.5; got {_show(value)}")


def _boolean(spec: ParamSpec, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ParamError(spec.name, f"must be true or false; got {_show(value)}")


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, Decimal) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_params(specs: Sequence[ParamSpec], raw: Mapping[str, object]) -> dict[str, ParamValue]:
    """Declared parameters only (others are not priced and are ignored), defaults applied, in spec order."""
    out: dict[str, ParamValue] = {}
    for spec in specs:
        if spec.name in raw and raw[spec.name] is not None:
            out[spec.name] = coerce(spec, raw[spec.name])
        elif spec.default is not None:
            out[spec.name] = spec.default
        elif spec.required:
            raise ParamError(spec.name, f"is required (in the {spec.source.value})")
    return out


def json_value(value: ParamValue) -> object:
    """Decimals as strings: JSON numbers would go through binary floats in most clients."""
    return format_decimal(value) if isinstance(value, Decimal) else value


def canonical_json(params: Mapping[str, ParamValue]) -> bytes:
    return orjson.dumps({k: json_value(v) for k, v in params.items()}, option=orjson.OPT_SORT_KEYS)


def params_hash(params: Mapping[str, ParamValue]) -> str:
    return hashlib.sha256(canonical_json(params)).hexdigest()
