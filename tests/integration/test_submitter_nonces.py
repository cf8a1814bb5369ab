"""The submitter's nonce guess (facilitator/settlement/submitter.py): a group signs for the nonce its key
should be at and stores in one statement; when another process used the key meanwhile, the ledger refuses
the guess and the locking path allocates. Two submitters sharing a key and a ledger, as two replicas do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from facilitator.settlement.ledger import Ledger
from facilitator.settlement.signers import FeeQuote, Signer, SignerPool
from facilitator.settlement.states import Status
from facilitator.settlement.submitter import NewSubmission, Submission, Submitter
from shared.devchain.constants import DEV_ACCOUNT_KEYS
from tests.integration.test_ledger_groups import CHAIN, TOKEN, fresh_rows, ledger, new_settlement

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
        self.inserted_ahead = 0

    async def insert_submitted(self, *args: Any, **kwargs: Any) -> Any:
        entered = await super().insert_submitted(*args, **kwargs)
        self.inserted_ahead += entered is not None
        return entered

    async def store_transactions(self, *args: Any, **kwargs: Any) -> Any:
        self.locking += 1
        return await super().store_transactions(*args, **kwargs)

    async def store_transactions_at(self, *args: Any, **kwargs: Any) -> Any:
        stored = await super().store_transactions_at(*args, **kwargs)
        self.ahead += stored is not None
        return stored


@dataclass
class Replicas:
    """Two submitters sharing one key and one ledger, as two replicas do."""

    signer: Signer
    ledger: CountingLedger
    node: Node
    first: Submitter
    second: Submitter


@pytest.fixture
async def replicas(ledger: Ledger) -> Replicas:
    signer = Signer(DEV_ACCOUNT_KEYS[1])
    await ledger.sync_signer_nonce(CHAIN, signer.address, 0)
    counting, node = CountingLedger(ledger), Node()
    first, second = (
        Submitter(counting, node, SignerPool([Signer(DEV_ACCOUNT_KEYS[1])]), CHAIN)  # type: ignore[arg-type]
        for _ in range(2)
    )
    return Replicas(signer, counting, node, first, second)


async def test_replicas_sharing_a_key_get_consecutive_nonces_guessed_or_not(
    ledger: Ledger, replicas: Replicas
) -> None:
    counting, node, first, second = replicas.ledger, replicas.node, replicas.first, replicas.second
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
        assert (stored.signer, stored.signer_nonce) == (replicas.signer.address, nonce)


async def test_new_settlements_go_in_with_their_transaction_and_a_known_one_is_left_alone(
    ledger: Ledger, replicas: Replicas
) -> None:
    counting, node, first, second = replicas.ledger, replicas.node, replicas.first, replicas.second
    news = [new_settlement(f"0x{i:040x}") for i in range(1, 7)]

    nonces = []
    for i, new in enumerate(news):
        submitter = second if i % 3 == 2 else first
        entered = await submitter.submit_new(NewSubmission(new, f"o/{i}", TOKEN, new.calldata, 90_000, FEES))
        assert entered is not None
        row, sent = entered
        assert sent.refused is None and row.key == new.key and row.lease_owner == f"o/{i}"
        current = await ledger.get(row.id)
        assert current is not None and current.status is Status.SUBMITTED
        assert current.tx_hash == sent.signed.tx_hash
        nonces.append(sent.signed.nonce)

    assert nonces == [0, 1, 2, 3, 4, 5]
    # One statement for row and transaction when the guess holds (rows 1 and 4), else insert then store.
    assert (counting.inserted_ahead, counting.locking) == (2, 4)
    # An authorization already in the ledger: nothing stored or sent for it, the key's next nonce untouched.
    again = await first.submit_new(NewSubmission(news[0], "o/again", TOKEN, news[0].calldata, 90_000, FEES))
    assert again is None and len(node.sent) == 6
    (extra,) = await fresh_rows(ledger, 1)
    sent = await first.submit(Submission(extra, TOKEN, extra.calldata, 90_000, FEES))
    assert sent.signed.nonce == 6
