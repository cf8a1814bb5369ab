"""Rows of the engine's tables as typed values, and the public view of a job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from .states import JobStatus, StepStatus


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: UUID
    tool: str
    params: dict[str, Any]
    payer: str | None
    idempotency_key: str | None
    status: JobStatus
    progress: float
    status_text: str
    current_step: int
    runs: int
    run_after: datetime
    lease_owner: str | None
    lease_until: datetime | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result: dict[str, Any]
    failure_category: str | None
    failure_code: str | None
    failure_message: str | None
    failed_step: str | None
    notices: list[dict[str, str]]
    price: dict[str, Any] | None
    payment_challenge_id: str | None
    payment_nonce: str | None  # the payment's EIP-3009 authorization nonce; names it in a batched transaction
    payment_tx_hash: str | None
    settlement_status: str | None
    webhook_url: str | None
    webhook_secret: str | None
    webhook_progress: bool
    final_handled: bool
    final_attempts: int
    final_error: str | None
    deadline_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> JobRecord:
        return cls(
            id=r["id"],
            tool=r["tool"],
            params=r["params"],
            payer=r["payer"],
            idempotency_key=r["idempotency_key"],
            status=JobStatus(r["status"]),
            progress=float(r["progress"]),
            status_text=r["status_text"],
            current_step=r["current_step"],
            runs=r["runs"],
            run_after=r["run_after"],
            lease_owner=r["lease_owner"],
            lease_until=r["lease_until"],
            queued_at=r["queued_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            updated_at=r["updated_at"],
            result=r["result"],
            failure_category=r["failure_category"],
            failure_code=r["failure_code"],
            failure_message=r["failure_message"],
            failed_step=r["failed_step"],
            notices=r["notices"],
            price=r["price"],
            payment_challenge_id=r["payment_challenge_id"],
            payment_nonce=r["payment_nonce"],
            payment_tx_hash=r["payment_tx_hash"],
            settlement_status=r["settlement_status"],
            webhook_url=r["webhook_url"],
            webhook_secret=r["webhook_secret"],
            webhook_progress=r["webhook_progress"],
            final_handled=r["final_handled"],
            final_attempts=r["final_attempts"],
            final_error=r["final_error"],
            deadline_at=r["deadline_at"],
        )

    def public_view(self) -> dict[str, Any]:
        """What API clients and webhook receivers see: no secret, no lease bookkeeping."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": str(self.id),
            "tool": self.tool,
            "status": self.status.value,
            "progress": round(self.progress, 4),
            "status_text": self.status_text,
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "deadline_at": iso(self.deadline_at),
            "result": self.result,
            "failure": (
                {
                    "category": self.failure_category,
                    "code": self.failure_code,
                    "message": self.failure_message,
                    "step": self.failed_step,
                }
                if self.failure_category is not None
                else None
            ),
            "notices": self.notices,
            "price": self.price,
            "payment": {
                "challenge_id": self.payment_challenge_id,
                "nonce": self.payment_nonce,
                "tx_hash": self.payment_tx_hash,
                "payer": self.payer,
                "settlement_status": self.settlement_status,
            },
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    job_id: UUID
    idx: int
    name: str
    status: StepStatus
    attempts: int
    output: dict[str, Any] | None
    error_category: str | None
    error_message: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StepRecord:
        return cls(
            job_id=r["job_id"],
            idx=r["idx"],
            name=r["name"],
            status=StepStatus(r["status"]),
            attempts=r["attempts"],
            output=r["output"],
            error_category=r["error_category"],
            error_message=r["error_message"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: int
    job_id: UUID
    kind: str  # status | progress | notice
    status: JobStatus
    progress: float
    text: str
    detail: dict[str, Any]
    at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> JobEvent:
        return cls(
            id=r["id"],
            job_id=r["job_id"],
            kind=r["kind"],
            status=JobStatus(r["status"]),
            progress=float(r["progress"]),
            text=r["text"],
            detail=r["detail"],
            at=r["at"],
        )

    def to_json(self) -> dict[str, Any]:
        """Shape for an SSE ``data:`` line; ``id`` doubles as the SSE event id (Last-Event-ID resumes)."""
        return {
            "id": self.id,
            "job_id": str(self.job_id),
            "kind": self.kind,
            "status": self.status.value,
            "progress": round(self.progress, 4),
            "text": self.text,
            "detail": self.detail,
            "at": self.at.isoformat(),
        }
