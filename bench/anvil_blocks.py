"""What a settlement's block costs Anvil in automine, as its chain fills and as sends overlap.

    .venv/bin/python -m bench.anvil_blocks [--rounds 4] [--per-round 400] [--in-flight 1,8,32,64]

Sends pre-signed `transferWithAuthorization` transactions (the call the facilitator settles with; every one
a fresh EIP-3009 nonce, so a new USDC storage slot) from one key straight to a fresh DevChain, each
connection sending its next transaction when the previous one is answered. Rounds of one send at a time
show how Anvil's CPU per block grows with what the chain holds; the last round at each `--in-flight`
shows how many transfers a block gets when sends overlap. Anvil's CPU is read from /proc, so "ms/block" is
CPU time, not latency. No facilitator, no database: this is the floor the facilitator benchmark stands on.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

import aiohttp
import orjson
import psutil
from coincurve import PrivateKey
from eth_account import Account

from bench.rpc_costs import transfer_calldata
from facilitator.settlement.tx_signing import sign_eip1559_call
from shared.devchain.chain import DevChain


async def _post(session: aiohttp.ClientSession, url: str, body: object) -> dict[str, object]:
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
        reply: dict[str, object] = orjson.loads(await r.read())
        return reply


async def _rpc(session: aiohttp.ClientSession, url: str, method: str, params: list[object]) -> object:
    reply = await _post(session, url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def send_round(chain: DevChain, key: PrivateKey, nonce: int, count: int, in_flight: int) -> str:
    calldata = transfer_calldata(chain, count)
    url = chain.rpc_url
    anvil = psutil.Process(chain.anvil.pid)
    async with aiohttp.ClientSession() as session:
        block = await _rpc(session, url, "eth_getBlockByNumber", ["latest", False])
        assert isinstance(block, dict)
        max_fee = 3 * int(block["baseFeePerGas"], 16) + 10**6
        raws: list[tuple[str, str]] = []
        for i, data in enumerate(calldata):
            raw, tx_hash = sign_eip1559_call(
                key,
                chain_id=chain.chain_id,
                nonce=nonce + i,
                max_priority_fee_per_gas=10**6,
                max_fee_per_gas=max_fee,
                gas=200_000,
                to=chain.usdc.address,
                data=data,
            )
            raws.append(("0x" + raw.hex(), "0x" + tx_hash.hex()))
        first_block = int(str(await _rpc(session, url, "eth_blockNumber", [])), 16)
        cpu_before = sum(anvil.cpu_times()[:2])
        started = time.perf_counter()
        queue: Iterator[tuple[str, str]] = iter(raws)

        async def connection() -> None:
            for raw, _ in queue:
                await _rpc(session, url, "eth_sendRawTransaction", [raw])

        await asyncio.gather(*(connection() for _ in range(in_flight)))
        while not await _rpc(session, url, "eth_getTransactionReceipt", [raws[-1][1]]):  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        cpu = sum(anvil.cpu_times()[:2]) - cpu_before
        blocks = int(str(await _rpc(session, url, "eth_blockNumber", [])), 16) - first_block
    return (
        f"| {in_flight} | {count} | {count / elapsed:.0f} | {blocks} | {count / max(blocks, 1):.1f} "
        f"| {cpu / max(blocks, 1) * 1e3:.2f} | {cpu / count * 1e3:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.anvil_blocks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of one send at a time (default 4)")
    parser.add_argument("--per-round", type=int, default=400, help="transfers per round (default 400)")
    parser.add_argument("--in-flight", default="1,8,32,64", help="sends in flight for the closing rounds")
    args = parser.parse_args()
    chain = DevChain.start(facilitator_key_count=1)
    try:
        account = Account.from_key(chain.facilitator_keys[0])
        key = PrivateKey(bytes(account.key))
        nonce = int(chain.rpc.request("eth_getTransactionCount", [account.address, "pending"]), 16)
        print(
            "| sends in flight | transfers | transfers/s | blocks | transfers/block | Anvil CPU ms/block "
            "| Anvil CPU ms/transfer |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        plan = [1] * args.rounds + [int(x) for x in args.in_flight.split(",")]
        for in_flight in plan:
            print(asyncio.run(send_round(chain, key, nonce, args.per_round, in_flight)), flush=True)
            nonce += args.per_round
    finally:
        chain.stop()


if __name__ == "__main__":
    main()
