"""Settles several payments through an in-process facilitator so that they reach the submitter in one
group, and so ride one batch transaction: concurrent HTTP requests form groups however they happen to
arrive. Each payment is verified first (the facilitator must reuse verifications: `verify_reuse_seconds`
well above the test's length) and the gas and fee figures are fetched ahead, so no settle waits on the
chain before its group forms."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from facilitator.exact_evm.payment import ExactPayment
from facilitator.wire import parse_request
from shared.x402.models import SettleResponse
from tests.fixtures.facilitator import RunningFacilitator


async def verified_ahead(fac: RunningFacilitator, bodies: list[dict[str, Any]]) -> list[ExactPayment]:
    """The payments of `bodies`, each verified by the facilitator (which keeps the verification for its
    settle), with the gas figure for their transfers known."""
    core = fac.core
    payments = [parse_request(body) for body in bodies]
    network = core.settlement.networks[core.verifier.chain_of(payments[0])]
    warm = await core.verifier.verify(payments[0])
    await network.gas.limit_for(warm, network.signers.addresses[0])
    for payment in payments:
        assert (await core.verify(payment)).is_valid
    return payments


async def settle_in_one_group(fac: RunningFacilitator, payments: list[ExactPayment]) -> list[SettleResponse]:
    """Settles `verified_ahead` payments together: they reach the submitter in one loop turn."""
    core = fac.core
    await core.settlement.networks[core.verifier.chain_of(payments[0])].fees.refresh()
    return list(await asyncio.gather(*(core.settle(p) for p in payments)))


async def first_transactions(dsn: str) -> dict[str, tuple[str, str]]:
    """Each settlement's first stored transaction, by authorization nonce: (tx hash, signer), read from the
    audit trail, which keeps them after the ledger forgets a refused transaction."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT DISTINCT ON (s.id) s.auth_nonce, e.detail->>'tx_hash' AS tx_hash,
                      e.detail->>'signer' AS signer
               FROM settlements s JOIN settlement_events e ON e.settlement_id = s.id
               WHERE e.to_status = 'submitted' ORDER BY s.id, e.id"""
        )
    finally:
        await conn.close()
    return {r["auth_nonce"]: (r["tx_hash"], r["signer"]) for r in rows}
