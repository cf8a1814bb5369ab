"""The submitter's nonce guess (facilitator/settlement/submitter.py): a group signs for the nonce its key
should be at and stores in one statement; when another process used the key meanwhile, the ledger refuses
the guess and the locking path allocates. Two submitters sharing a key and a ledger, as two replicas do."""

from __future__ import annotations

from typing import Any

import pytest

from facilitator.settlement.ledger import Ledger
from facilitator.settlement.signers import FeeQuote, Signer, SignerPool
from facilitator.settlement.submitter import Submission, Submitter
from shared.devchain.constants import DEV_ACCOUNT_KEYS
from tests.integration.test_ledger_groups import CHAIN, TOKEN, fresh_rows, ledger

pytestmark = pytest.mark.integration
__all__ = ["ledger"]  # fixture

FEES = FeeQuote(max_fee_per_gas=2 * 10**9, max_priority_fee_per_gas=10**9)


class Node:
    """Takes every transaction: these tests are about what the ledger hands out, not the chain."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_raw_transaction(self, raw: bytes, *, batch: bool = True) -> str:
        self.sent.append(raw)
        return "0x"

    async def get_code(self, address: str) -> bytes:
        return b""


class CountingLedger(Ledger):
    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger.pool)
        self.locking = 0
        self.ahead = 0

    async def store_transactions(self, *args: Any, **kwargs: Any) -> Any:
        self.locking += 1
        return await super().store_transactions(*args, **kwargs)

    async def store_transactions_at(self, *args: Any, **kwargs: Any) -> Any:
        stored = await super().store_transactions_at(*args, **kwargs)
        self.ahead += stored is not None
        return stored


async def test_replicas_sharing_a_key_get_consecutive_nonces_guessed_or_not(ledger: Ledger) -> None:
    signer = Signer(DEV_ACCOUNT_KEYS[1])
    await ledger.sync_signer_nonce(CHAIN, signer.address, 0)
    counting = CountingLedger(ledger)
    node = Node()
    first, second = (
        Submitter(counting, node, SignerPool([Signer(DEV_ACCOUNT_KEYS[1])]), CHAIN)  # type: ignore[arg-type]
        for _ in range(2)
    )
    rows = await fresh_rows(ledger, 6)

    nonces = []
    for i, row in enumerate(rows):
        submitter = second if i % 3 == 2 else first  # first, first, second, first, first, second
        sent = await submitter.submit(Submission(row, TOKEN, b"\xe3\xee\x16\x0e" + bytes(40), 90_000, FEES))
        assert sent.refused is None
        nonces.append(sent.signed.nonce)

    assert nonces == [0, 1, 2, 3, 4, 5]
    assert len(node.sent) == 6
    # Guessed right after its own store (rows 1 and 4); without a guess (rows 0 and 2) or after the other
    # replica moved the key (rows 3 and 5), the locking path.
    assert (counting.ahead, counting.locking) == (2, 4)
    for row, nonce in zip(rows, nonces, strict=True):
        (stored,) = await ledger.transactions(row.id)
        assert (stored.signer, stored.signer_nonce) == (signer.address, nonce)
