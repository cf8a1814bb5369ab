"""Reading generation requests. Pure: bytes in, validated values or a precise refusal out.

POST /generate:

    {"tool": "music",
     "inputs": {"prompt": "calm piano", "duration_seconds": 20},
     "delivery": {"mode": "poll"}}                                  # the default
     "delivery": {"mode": "webhook", "url": "https://…", "secret": "…", "includeProgress": false}

POST /tools/{id}/quote:  {"inputs": {...}}"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .. import reasons
from ..generation.engine.params import InvalidParams
from ..generation.engine.tools import Tool
from ..generation.webhooks.addresses import AllowList, DestinationRefused, check_webhook_url

MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
MAX_URL_CHARS = 2048
_GENERATE_KEYS = frozenset({"tool", "inputs", "delivery"})
_WEBHOOK_KEYS = frozenset({"mode", "url", "secret", "includeProgress"})


class RequestError(ValueError):
    """HTTP ``status`` with ``error`` (a code) and ``message`` (a sentence)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str
    include_progress: bool


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    tool: str
    inputs: dict[str, Any]  # as sent; validate_inputs checks them against the tool
    webhook: Webhook | None  # None: the client polls (or follows the events stream)


def _object(body: bytes, shape: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        raise RequestError(400, reasons.INVALID_REQUEST, f"the body must be JSON: {shape}") from None
    if not isinstance(data, dict):
        raise RequestError(400, reasons.INVALID_REQUEST, f"the body must be a JSON object: {shape}")
    return data


def parse_generate(body: bytes) -> GenerateRequest:
    data = _object(body, '{"tool", "inputs", "delivery"?}')
    unknown = sorted(set(data) - _GENERATE_KEYS)
    if unknown:
        raise RequestError(
            400, reasons.INVALID_REQUEST, f"unknown field {unknown[0]!r} (allowed: tool, inputs, delivery)"
        )
    tool = data.get("tool")
    if not isinstance(tool, str) or not tool:
        raise RequestError(400, reasons.INVALID_REQUEST, "tool must name a tool (GET /tools lists them)")
    inputs = data.get("inputs", {})
    if not isinstance(inputs, dict):
        raise RequestError(400, "invalid_inputs", "inputs must be a JSON object")
    return GenerateRequest(tool, inputs, _delivery(data.get("delivery")))


def _delivery(value: object) -> Webhook | None:
    if value is None or value == "poll" or value == {"mode": "poll"}:
        return None
    if not isinstance(value, dict) or value.get("mode") != "webhook":
        raise RequestError(
            400,
            "invalid_delivery",
            'delivery must be {"mode": "poll"} or {"mode": "webhook", "url", "secret", "includeProgress"?}',
        )
    unknown = sorted(set(value) - _WEBHOOK_KEYS)
    if unknown:
        raise RequestError(400, "invalid_delivery", f"unknown delivery field {unknown[0]!r}")
    url, secret, progress = value.get("url"), value.get("secret"), value.get("includeProgress", False)
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise RequestError(
            400, "invalid_delivery", f"delivery.url must be a URL of at most {MAX_URL_CHARS} characters"
        )
    if not isinstance(secret, str) or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise RequestError(
            400,
            "invalid_delivery",
            f"delivery.secret must be a string of {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters "
            "(webhooks are signed with it)",
        )
    if not isinstance(progress, bool):
        raise RequestError(400, "invalid_delivery", "delivery.includeProgress must be true or false")
    return Webhook(url, secret, progress)


def check_webhook(webhook: Webhook | None, allow: AllowList) -> None:
    """Refuse, before any payment, a destination that could never be delivered to."""
    if webhook is None:
        return
    try:
        check_webhook_url(webhook.url, allow)
    except DestinationRefused as exc:
        raise RequestError(400, "invalid_webhook", f"delivery.url: {exc}") from None


def parse_quote(body: bytes) -> dict[str, Any]:
    data = _object(body, '{"inputs": {...}}')
    unknown = sorted(set(data) - {"inputs"})
    if unknown:
        raise RequestError(400, reasons.INVALID_REQUEST, f"unknown field {unknown[0]!r} (allowed: inputs)")
    inputs = data.get("inputs", {})
    if not isinstance(inputs, dict):
        raise RequestError(400, "invalid_inputs", "inputs must be a JSON object")
    return inputs


def find_tool(tools: Mapping[str, Tool], name: str) -> Tool:
    tool = tools.get(name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        raise RequestError(404, "unknown_tool", f"no tool named {name!r} (tools: {known})")
    return tool


def validate_inputs(tool: Tool, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's normalised inputs. Keys its schema does not declare are refused when the schema closes
    them, so a misspelt option is an error instead of being silently ignored."""
    schema = tool.input_schema(tool.limits)
    if schema.get("additionalProperties") is False:
        declared = set(schema.get("properties", {}))
        unknown = sorted(set(inputs) - declared)
        if unknown:
            allowed = ", ".join(sorted(declared)) or "none"
            raise RequestError(400, "invalid_inputs", f"unknown input {unknown[0]!r} (inputs: {allowed})")
    try:
        return tool.parse_params(inputs, tool.limits)
    except InvalidParams as exc:
        raise RequestError(400, exc.code, exc.message) from None
