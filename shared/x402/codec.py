"""Header codecs: standard base64 of compact UTF-8 JSON, as every x402 SDK writes them."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from shared.x402.models import WireModel

# A real payment header is ~1-2 KB; ERC-6492 wrappers make it larger, but never this large.
MAX_HEADER_BYTES = 16 * 1024

M = TypeVar("M", bound=BaseModel)


class HeaderDecodeError(ValueError):
    """The header is not base64 JSON of the expected shape; the message says what is wrong."""


def encode_json_header(value: WireModel | dict[str, Any]) -> str:
    data = value.to_wire() if isinstance(value, WireModel) else value
    return base64.b64encode(orjson.dumps(data)).decode("ascii")


def decode_json_header(value: str, *, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    if len(value) > max_bytes:
        raise HeaderDecodeError(f"header is {len(value)} bytes, the limit is {max_bytes}")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HeaderDecodeError("header is not valid base64") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HeaderDecodeError("header does not decode to JSON") from exc
    if not isinstance(data, dict):
        raise HeaderDecodeError("header JSON must be an object")
    return data


def decode_model_header(value: str, model: type[M], *, max_bytes: int = MAX_HEADER_BYTES) -> M:
    data = decode_json_header(value, max_bytes=max_bytes)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HeaderDecodeError(f"header is not a valid {model.__name__}: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def describe_validation_error(exc: ValidationError) -> str:
    return _first_error(exc)
