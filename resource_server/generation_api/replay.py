"""POST /generate sent again with the payment that already created a job: the client's 202 was lost on the
network and it resends the same signed payment, as it must (a second payment could charge twice). The
payment middleware recognised the payment (same stored payload, same priced parameters); here the job it
paid for is found and the request compared with the job's own, so the answer is that job's 202 again and
nothing is created.

The job is found by its idempotency key, the challenge id of its payment (one payment, one job). The job
token is not stored anywhere: it is HMAC(server secret, job id) (access.py), so it is rebuilt exactly and
stays as unguessable as before."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..generation.engine.params import InvalidParams
from ..generation.engine.records import JobRecord
from ..generation.engine.service import GenerationEngine

if TYPE_CHECKING:
    from .endpoint import AcceptedRequest


async def job_of_payment(engine: GenerationEngine, challenge_id: str) -> JobRecord | None:
    """The job a payment's challenge created, if any (read only: never creates one)."""
    return await engine.store.get_by_payment(challenge_id)


def same_request(job: JobRecord, accepted: AcceptedRequest) -> bool:
    """Whether the resent request asks for what the job runs: tool, every input (the challenge binds only
    the priced ones) and delivery. Inputs compare as the engine stored them."""
    tool, webhook = accepted.tool, accepted.webhook
    try:
        params = tool.parse_params(accepted.inputs, tool.limits)
    except InvalidParams:
        return False
    return (
        job.tool == tool.name
        and _canonical(job.params) == _canonical(params)
        and job.webhook_url == (webhook.url if webhook else None)
        and job.webhook_secret == (webhook.secret if webhook else None)
        and job.webhook_progress == (webhook.include_progress if webhook else False)
    )


def _canonical(value: Any) -> str:
    # JSON as the job's params round-trip through the database: key order and containers do not matter.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
