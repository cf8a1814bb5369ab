"""Settlement ledger rows for tests that need one without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from facilitator.settlement.ledger import SettlementKey, SettlementRow
from facilitator.settlement.states import Status

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def settlement_row(key: SettlementKey, pay_to: str, amount: int, **changes: Any) -> SettlementRow:
    """A received row for `key`, nothing sent yet; `changes` sets any other field."""
    base: dict[str, Any] = dict(
        id=7,
        key=key,
        pay_to=pay_to,
        amount=amount,
        valid_after=0,
        valid_before=2**40,
        network="eip155:84532",
        x402_version=2,
        payload_hash="ab" * 32,
        payload={},
        requirements={},
        calldata=b"\xe3\xee\x16\x0e",
        status=Status.RECEIVED,
        error_reason=None,
        error_message=None,
        tx_hash=None,
        block_number=None,
        block_hash=None,
        gas_used=None,
        attempts=0,
        lease_owner=None,
        lease_until=None,
        created_at=NOW,
        updated_at=NOW,
        submitted_at=None,
        finalized_at=None,
    )
    return SettlementRow(**{**base, **changes})
