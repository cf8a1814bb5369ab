"""What GET /jobs/{id} answers. Pure: a job, its current payment state and its links in; JSON out.

The job itself is `JobRecord.public_view()`, the very object webhook receivers get in `data.job`, so a
client parses one shape whichever way it follows a job. Added here: timings, the payment's receipt link,
and URLs (the result as a short-lived signed link, usable without the job token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ..generation.engine.records import JobRecord
from ..generation.engine.states import JobStatus
from .access import SignedLink
from .payments import PaymentState


def job_urls(base_url: str, job_id: UUID) -> dict[str, str]:
    root = f"{base_url}/jobs/{job_id}"
    return {
        "self": root,
        "events": f"{root}/events",
        "result": f"{root}/result",
        "redeliver": f"{root}/webhook/redeliver",
    }


def _span(start: datetime | None, end: datetime | None, now: datetime) -> float | None:
    if start is None:
        return None
    return round(((end or now) - start).total_seconds(), 3)


def timings(job: JobRecord, now: datetime) -> dict[str, float | None]:
    """Seconds queued, running and in all; running totals while the job is not final."""
    return {
        "queued_seconds": _span(job.queued_at, job.started_at or job.finished_at, now),
        "running_seconds": _span(job.started_at, job.finished_at, now),
        "total_seconds": _span(job.queued_at, job.finished_at, now),
    }


def receipt_url(receipt_base_url: str, tx_hash: str, nonce: str | None) -> str:
    """The facilitator's receipt of the job's payment. A batched settlement's transaction carries several
    payments, and without the nonce naming ours the facilitator answers 409; jobs stored before the nonce
    was kept (or never paid) have none and get the bare link, which still works for a lone settlement."""
    url = f"{receipt_base_url.rstrip('/')}/receipt/{tx_hash}"
    return f"{url}?nonce={nonce}" if nonce else url


def job_view(
    job: JobRecord,
    *,
    base_url: str,
    payment: PaymentState,
    receipt_base_url: str | None,
    result_link: SignedLink | None,
    now: datetime,
) -> dict[str, Any]:
    view = job.public_view()
    urls = job_urls(base_url, job.id)
    links: dict[str, Any] = {"self": urls["self"], "events": urls["events"]}
    if job.status is JobStatus.COMPLETED and result_link is not None:
        links["result"] = f"{urls['result']}?{result_link.query()}"
        links["result_expires_at"] = result_link.expires
    if job.webhook_url is not None:
        links["webhook_redeliver"] = urls["redeliver"]
    receipt = (
        receipt_url(receipt_base_url, payment.tx_hash, job.payment_nonce)
        if receipt_base_url and payment.tx_hash
        else None
    )
    view["payment"] = {
        **view["payment"],
        "settlement_status": payment.status,
        "tx_hash": payment.tx_hash,
        "receipt_url": receipt,
    }
    view["timings"] = timings(job, now)
    view["links"] = links
    return view
