"""GET /tools: what can be generated, with what inputs, within what limits, for how much. Pure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..api import describe_accept
from ..generation.engine.tools import Tool
from ..pricing.money import format_decimal
from .offers import GENERATE_PATH, PaymentTerms

PRICE_FORMULA = (
    "(sum of step fixed prices + sum of step perSecond prices × duration_seconds) × (1 + markupRate), "
    "in US dollars, rounded up to the paying token's smallest unit"
)


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def describe_price(tool: Tool) -> dict[str, Any]:
    per_second = any(s.price.per_second != 0 for s in tool.steps)
    return {
        "currency": "USD",
        "formula": PRICE_FORMULA,
        "steps": [
            {
                "step": s.name,
                "fixed": format_decimal(s.price.fixed),
                "perSecond": format_decimal(s.price.per_second),
            }
            for s in tool.steps
        ],
        "markupRate": format_decimal(tool.markup_rate),
        "dependsOn": list(tool.priced_params) if per_second else [],
        **({} if per_second else {"fixed": format_decimal(tool.price({}).total)}),
    }


def describe_limits(tool: Tool) -> dict[str, Any]:
    limits = tool.limits
    out: dict[str, Any] = {
        "maxJobSeconds": _seconds(limits.max_job_seconds),
        "expectedSeconds": _seconds(limits.expected_seconds),
        "maxOutputBytes": limits.max_output_bytes,
    }
    if "duration_seconds" in tool.input_schema(limits).get("properties", {}):
        out["minDurationSeconds"] = _seconds(limits.min_duration_seconds)
        out["maxDurationSeconds"] = _seconds(limits.max_duration_seconds)
    if "prompt" in tool.input_schema(limits).get("properties", {}):
        out["maxPromptChars"] = limits.max_prompt_chars
    if limits.max_active_per_payer is not None:
        out["maxActiveJobsPerPayer"] = limits.max_active_per_payer
    return out


def describe_payment(tool: Tool, terms: PaymentTerms) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "settlement": "on_completion" if terms.deferred(tool) else "on_accept",
        "maxTimeoutSeconds": terms.max_timeout_seconds(tool),
        "accepts": [describe_accept(o) for o in terms.accepts],
    }


def describe_tool(tool: Tool, terms: PaymentTerms, base_url: str) -> dict[str, Any]:
    return {
        "id": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema(tool.limits),
        "limits": describe_limits(tool),
        "price": describe_price(tool),
        "payment": describe_payment(tool, terms),
        "urls": {
            "self": f"{base_url}/tools/{tool.name}",
            "quote": f"{base_url}/tools/{tool.name}/quote",
            "generate": f"{base_url}{GENERATE_PATH}",
        },
    }


def price_json(total: Decimal, breakdown: dict[str, Any]) -> dict[str, Any]:
    return {"currency": "USD", "total": format_decimal(total), "breakdown": breakdown}
