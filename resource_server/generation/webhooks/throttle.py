"""Progress webhooks: at most one per interval per job. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

PROGRESS_INTERVAL = timedelta(seconds=5)


def progress_webhook_due(
    last_sent_at: datetime | None, now: datetime, interval: timedelta = PROGRESS_INTERVAL
) -> bool:
    """Whether a progress event may be sent now. Final events never go through this: they always go."""
    if last_sent_at is None:
        return True
    # A clock that moved backwards (last in the future) must not silence progress for the whole job.
    return now - last_sent_at >= interval or now < last_sent_at
