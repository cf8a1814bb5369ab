"""What a tool is: a named pipeline of priced steps with caps. Definitions only; the worker runs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from .params import ToolLimits, duration_of, prompt_duration_schema, validate_prompt_duration
from .pricing import PriceBreakdown, StepPrice, price_breakdown
from .states import PHASES, JobStatus

StepOutput = Mapping[str, Any]  # JSON-serialisable; persisted when the step finishes


class ProgressFn(Protocol):
    async def __call__(self, fraction: float, text: str | None = None) -> None: ...


class NoticeFn(Protocol):
    async def __call__(self, code: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class StepContext:
    job_id: UUID
    tool: str
    params: Mapping[str, Any]
    outputs: Mapping[str, StepOutput]  # outputs of the steps already finished, by step name
    attempt: int  # 1 for the first attempt of this step
    limits: ToolLimits
    report: ProgressFn  # fraction of THIS step in [0, 1], optional status text
    notice: NoticeFn  # a user-visible remark on the job, e.g. the prompt was adjusted


StepFn = Callable[[StepContext], Awaitable[StepOutput]]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    run: StepFn
    price: StepPrice = field(default_factory=StepPrice)
    phase: JobStatus = JobStatus.RUNNING  # the job's status while this step runs
    weight: float = 1.0  # share of the progress bar
    label: str | None = None  # status text when the step starts
    timeout_seconds: float = 600.0  # a hung provider call becomes a transient failure
    max_attempts: int = 4

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"step {self.name!r}: phase must be running or uploading")
        if self.max_attempts < 1 or self.weight < 0 or self.timeout_seconds <= 0:
            raise ValueError(f"step {self.name!r}: bad limits")


def _last_output(outputs: Mapping[str, StepOutput]) -> dict[str, Any]:
    return dict(list(outputs.values())[-1]) if outputs else {}


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    steps: tuple[Step, ...]
    limits: ToolLimits = field(default_factory=ToolLimits)
    markup_rate: Decimal = Decimal("0.2")
    parse_params: Callable[[Mapping[str, Any], ToolLimits], dict[str, Any]] = validate_prompt_duration
    # The job's public result from all step outputs; by default the last step's output.
    result: Callable[[Mapping[str, StepOutput]], dict[str, Any]] = field(default=_last_output)
    description: str = ""
    # JSON Schema of the inputs parse_params accepts, for the catalogue (it must describe the same rules).
    input_schema: Callable[[ToolLimits], dict[str, Any]] = prompt_duration_schema
    # The validated inputs the price depends on: a payment is bound to these, so a cheap quote cannot pay
    # for expensive inputs, while the rest (a prompt's wording) may change between quote and payment.
    priced_params: tuple[str, ...] = ("duration_seconds",)

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tool {self.name!r} needs steps with distinct names")

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.steps]

    def price_basis(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The priced inputs of validated ``params`` (absent ones left out)."""
        return {name: params[name] for name in self.priced_params if name in params}

    def price(self, params: Mapping[str, Any]) -> PriceBreakdown:
        return price_breakdown(
            [(s.name, s.price) for s in self.steps],
            duration_seconds=duration_of(params),
            markup_rate=self.markup_rate,
        )


def tool_map(tools: Sequence[Tool]) -> dict[str, Tool]:
    found: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in found:
            raise ValueError(f"two tools named {tool.name!r}")
        found[tool.name] = tool
    return found
