"""The echo tool: one step that hands its input back. No provider, no artifact: it measures the pipeline
itself (queueing, leases, events, the settlement hook), so it is registered only for benchmarks and tests
(X402_RS_GENERATION_ECHO_TOOL). `delay_ms` makes the step wait like a provider call would, without CPU."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..engine.params import InvalidParams, ToolLimits
from ..engine.pricing import StepPrice
from ..engine.tools import Step, StepContext, StepOutput, Tool

NAME = "echo"
MAX_MESSAGE_CHARS = 1000
MAX_DELAY_MS = 10_000
LIMITS = ToolLimits(expected_seconds=0.1, max_job_seconds=120.0)


def parse_echo(params: Mapping[str, Any], limits: ToolLimits) -> dict[str, Any]:
    message = params.get("message", "")
    if not isinstance(message, str):
        raise InvalidParams("invalid_message", "message must be a string")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidParams("message_too_long", f"message is longer than {MAX_MESSAGE_CHARS} characters")
    delay = params.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
        raise InvalidParams("invalid_delay", f"delay_ms must be an integer from 0 to {MAX_DELAY_MS}")
    unknown = sorted(set(params) - {"message", "delay_ms"})
    if unknown:
        raise InvalidParams("unknown_input", f"unknown input {unknown[0]!r}")
    return {"message": message, "delay_ms": delay} if delay else {"message": message}


def echo_schema(limits: ToolLimits) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "message": {"type": "string", "maxLength": MAX_MESSAGE_CHARS},
            "delay_ms": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_MS},
        },
        "additionalProperties": False,
    }


async def _echo(ctx: StepContext) -> StepOutput:
    delay = int(ctx.params.get("delay_ms", 0))
    if delay:
        await asyncio.sleep(delay / 1000)
    return {"message": ctx.params.get("message", "")}


def echo_tool(*, price: Decimal = Decimal("0.001")) -> Tool:
    return Tool(
        NAME,
        (Step("echo", _echo, StepPrice(fixed=price), label="echoing", timeout_seconds=10),),
        limits=LIMITS,
        markup_rate=Decimal(0),
        parse_params=parse_echo,
        description="Returns its input message unchanged (pipeline benchmark; no artifact).",
        input_schema=echo_schema,
        priced_params=(),
    )
