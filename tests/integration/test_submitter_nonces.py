"""The submitter's nonce guess (facilitator/settlement/submitter.py): a group signs for the nonce its key
should be at and stores in one statement; when another process used the key meanwhile, the ledger refuses
the guess and the locking path allocates. Two submitters sharing a key and a ledger, as two replicas do."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from facilitator.settlement.ledger import Ledger, NotInserted
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
        self.not_inserted: list[NotInserted] = []

    async def insert_submitted(self, *args: Any, **kwargs: Any) -> Any:
        entered = await super().insert_submitted(*args, **kwargs)
        if isinstance(entered, NotInserted):
            self.not_inserted.append(entered)
        else:
            self.inserted_ahead += 1
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
        assert sent.refusal is None
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
        assert sent.refusal is None and row.key == new.key and row.lease_owner == f"o/{i}"
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


async def test_a_known_authorization_keeps_the_guess_a_moved_nonce_drops_it(
    ledger: Ledger, replicas: Replicas
) -> None:
    counting, node, first, second = replicas.ledger, replicas.node, replicas.first, replicas.second
    news = [new_settlement(f"0x{i:040x}") for i in range(1, 6)]

    def submission(i: int, owner: str) -> NewSubmission:
        return NewSubmission(news[i], owner, TOKEN, news[i].calldata, 90_000, FEES)

    entered = await first.submit_new(submission(0, "o/0"))  # no guess yet: the locking path
    assert entered is not None and entered[1].signed.nonce == 0
    assert (counting.inserted_ahead, counting.locking) == (0, 1)

    # The guess (nonce 1) is right, but the authorization is already in the ledger: nothing is written,
    # and the guess stands for the next settlement, which goes in with its transaction in one statement.
    assert await first.submit_new(submission(0, "o/again")) is None
    assert counting.not_inserted == [NotInserted.KNOWN_AUTHORIZATION]
    entered = await first.submit_new(submission(1, "o/1"))
    assert entered is not None and entered[1].signed.nonce == 1
    assert (counting.inserted_ahead, counting.locking) == (1, 1)

    # A known authorization grouped with a new one: the group's one statement fails for it, the new one is
    # inserted and stored on the kept guess (one statement again), the known one gets nothing.
    known, fresh = await asyncio.gather(
        first.submit_new(submission(1, "o/1-again")), first.submit_new(submission(2, "o/2"))
    )
    assert known is None and fresh is not None and fresh[1].signed.nonce == 2
    assert counting.not_inserted == [NotInserted.KNOWN_AUTHORIZATION] * 2
    assert (counting.ahead, counting.locking) == (1, 1)

    # Another replica moves the key: that guess is dropped, and the locking path allocates after it.
    entered = await second.submit_new(submission(3, "o/3"))
    assert entered is not None and entered[1].signed.nonce == 3
    entered = await first.submit_new(submission(4, "o/4"))
    assert entered is not None and entered[1].signed.nonce == 4
    assert counting.not_inserted[-1] is NotInserted.NONCE_MOVED
    assert counting.locking == 3
    assert len(node.sent) == 5
