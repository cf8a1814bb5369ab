"""How many PostgreSQL round trips and transactions the resource server spends per request.

Every statement the resource server's pool sends is counted with asyncpg's query logger: round trips are
statements (BEGIN and COMMIT included), transactions are BEGIN..COMMIT blocks plus statements sent outside
one (each is its own implicit transaction). The bounds are the minimum the guarantees allow; a change that
adds a round trip to the paid path should fail here, not only show up in bench/e2e_bench.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from tests.fixtures.resource_server import RunningResourceServer
from tests.integration.test_resource_server import (
    WEATHER_PRICE,
    challenge_of,
    pay_to,
    payer,
    start_rs,
    v1_header,
    v2_header,
)

pytestmark = pytest.mark.integration
__all__ = ["pay_to", "payer"]  # fixtures, shared with test_resource_server

REQUESTS = 10


@dataclass
class Tally:
    round_trips: int = 0
    transactions: int = 0
    statements: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.round_trips += other.round_trips
        self.transactions += other.transactions
        self.statements += other.statements


class PoolCounter:
    """Counts what every connection of a pool sends, from the next acquire on."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.tally = Tally()
        self._pool = pool
        self._in_tx: dict[int, bool] = {}

    def _logger(self, key: int) -> Any:
        def log(record: Any) -> None:
            query = " ".join(str(record.query).split())
            head = query.split(" ", 1)[0].upper().rstrip(";")
            self.tally.round_trips += 1
            if head == "BEGIN":
                self._in_tx[key] = True
                self.tally.transactions += 1
            elif head in ("COMMIT", "ROLLBACK"):
                self._in_tx[key] = False
            elif not self._in_tx.get(key, False):
                self.tally.transactions += 1
            if head not in ("BEGIN", "COMMIT", "ROLLBACK"):
                self.tally.statements[query[:70]] += 1

        return log

    def install(self) -> None:
        # Private asyncpg attributes, for measuring only: every new connection gets a logger through the
        # pool's init hook, and expiring the pool's connections makes every one of them a new one.
        pool: Any = self._pool
        inner_init = pool._init

        async def init(conn: asyncpg.Connection) -> None:
            if inner_init is not None:
                await inner_init(conn)
            conn.add_query_logger(self._logger(id(conn)))

        pool._init = init

    async def start(self) -> None:
        self.install()
        await self._pool.expire_connections()

    @contextmanager
    def measure(self) -> Iterator[Tally]:
        before = Tally(self.tally.round_trips, self.tally.transactions, Counter(self.tally.statements))
        result = Tally()
        try:
            yield result
        finally:
            result.round_trips = self.tally.round_trips - before.round_trips
            result.transactions = self.tally.transactions - before.transactions
            result.statements = self.tally.statements - before.statements


@pytest.fixture
async def rs(start_resource_server, facilitator, pay_to):
    # A reconciler that runs once at start and then sleeps: its sweeps would count as the requests'.
    return await start_rs(start_resource_server, facilitator, pay_to, reconcile_interval_seconds=3600.0)


async def settle_loggers() -> None:
    # Query loggers run through call_soon: let them run before reading the tally.
    for _ in range(3):
        await asyncio.sleep(0)


async def measured_get(
    counter: PoolCounter, rs: RunningResourceServer, **kwargs: Any
) -> tuple[httpx.Response, Tally]:
    """GET /weather, and what the server's pool sent for it."""
    with counter.measure() as one:
        response = await rs.get("/weather", **kwargs)
        await settle_loggers()
    return response, one


def report(label: str, tally: Tally, n: int) -> None:
    print(f"\n{label}: {tally.round_trips / n:.1f} round trips, {tally.transactions / n:.1f} transactions")
    for query, count in sorted(tally.statements.items(), key=lambda kv: -kv[1]):
        print(f"  {count / n:4.1f}  {query}")


async def test_round_trips_per_paid_request(dev_chain, rs, payer, pay_to, capsys):
    counter = PoolCounter(rs.runtime.store.pool)
    await counter.start()
    challenge_of(await rs.get("/weather"))  # warm: connections made, statements prepared
    await rs.get("/weather", headers=v2_header(payer, challenge_of(await rs.get("/weather"))[0].accepts[0]))

    issued, paid_v2, paid_v1 = Tally(), Tally(), Tally()
    for _ in range(REQUESTS):
        response, one = await measured_get(counter, rs)
        v2, _ = challenge_of(response)
        issued.add(one)
        paid, one = await measured_get(counter, rs, headers=v2_header(payer, v2.accepts[0]))
        assert paid.status_code == 200, paid.text
        paid_v2.add(one)

        _, v1 = challenge_of(await rs.get("/weather"))
        paid, one = await measured_get(counter, rs, headers=v1_header(payer, v1.accepts[0]))
        assert paid.status_code == 200, paid.text
        paid_v1.add(one)

    with capsys.disabled():
        report("402 (challenge issued)", issued, REQUESTS)
        report("paid v2 request, settled after the handler", paid_v2, REQUESTS)
        report("paid v1 request, settled after the handler", paid_v1, REQUESTS)
    assert dev_chain.balance_of(pay_to) == (2 * REQUESTS + 1) * WEATHER_PRICE
    # The 402 is one INSERT. A paid v1 request: the attempt's audit row with the replay check and the
    # candidates' read (before verifying), the claim (after), the settle transition: one statement each. A
    # v2 payment for a challenge this server issued is matched from memory: its audit row goes with the claim.
    assert (issued.round_trips, issued.transactions) == (REQUESTS, REQUESTS)
    assert (paid_v2.round_trips, paid_v2.transactions) == (2 * REQUESTS, 2 * REQUESTS)
    assert (paid_v1.round_trips, paid_v1.transactions) == (3 * REQUESTS, 3 * REQUESTS)
