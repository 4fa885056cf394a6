"""Throughput of the pure ledger core.

Prints the raw Ed25519 verification rate, then seal + validate + apply for
``--txs`` transactions (default 10,000) split into blocks, on two paths:

* leader: pending transactions loaded fresh (signatures unchecked), sealed,
  the sealed block validated as every block is, then committed;
* follower: the block and transactions decoded from bytes, validated,
  committed.

Each path verifies every signature exactly once, so the ratio to the raw
verification rate shows how much the rest of the pipeline costs.

    .venv/bin/python bench/chain_core_bench.py [--txs 10000] [--block 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chain.core import crypto, ledger
from chain.core.block import Block
from chain.core.consortium import Authority, ChainParams
from chain.core.registry import Field, Registry, TxType
from chain.core.state import DictState, StateChange, StateView
from chain.core.transaction import Transaction

CHAIN = "bench"
T0 = 1_700_000_000_000


def apply_set(view: StateView, tx: Transaction) -> list[StateChange]:
    return [StateChange("bench/" + tx.payload["key"], tx.payload["value"])]


def registry() -> Registry:
    reg = ledger.default_registry()
    reg.register(
        TxType(
            "bench.set",
            {"key": Field(str, max_length=32), "value": Field(int), "ref": Field(bytes)},
            apply=apply_set,
        )
    )
    return reg


def raw_verify_rate(n: int = 5_000) -> float:
    pair = crypto.new_ed25519()
    message = b"m" * 200
    signature = crypto.sign(pair.private, message)
    start = time.perf_counter()
    for _ in range(n):
        crypto.verify(pair.public, signature, message)
    return n / (time.perf_counter() - start)


def make_wire_txs(count: int, users: int) -> list[bytes]:
    keys = [crypto.new_ed25519() for _ in range(users)]
    wire = []
    for i in range(count):
        tx = Transaction.create(
            chain_id=CHAIN,
            type="bench.set",
            payload={"key": f"k{i}", "value": i, "ref": i.to_bytes(8, "big") * 4},
            seq=i // users + 1,
            private_key=keys[i % users].private,
            timestamp=T0,
        )
        wire.append(tx.encode())
    return wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--txs", type=int, default=10_000)
    parser.add_argument("--block", type=int, default=2_000, help="max transactions per block")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="signature-check threads")
    args = parser.parse_args()

    verify_rate = raw_verify_rate()
    print(f"raw Ed25519 verify:          {verify_rate:10,.0f} /s")

    node = crypto.new_ed25519()
    params = ChainParams(max_block_txs=args.block)
    genesis = ledger.make_genesis(
        chain_id=CHAIN, authorities=[Authority("n1", node.public)], timestamp=T0, params=params
    )
    genesis = genesis.with_votes([genesis.vote("n1", node.private)])
    leader_state, follower_state = DictState(), DictState()
    for state in (leader_state, follower_state):
        ledger.validate_genesis(genesis).commit(state)
    reg = registry()

    start = time.perf_counter()
    wire = make_wire_txs(args.txs, args.users)
    print(f"create + sign (client side): {args.txs / (time.perf_counter() - start):10,.0f} tx/s")

    # Leader: seal + validate + apply.
    pending = [Transaction.decode(data) for data in wire]  # as loaded from the mempool
    blocks: list[tuple[bytes, list[bytes]]] = []
    parent = genesis
    start = time.perf_counter()
    while pending:
        sealed = ledger.seal_block(
            parent=parent,
            pending=pending,
            state=leader_state,
            registry=reg,
            node_id="n1",
            node_key=node.private,
            now_ms=T0 + 1_000 * (parent.height + 1),
            threads=args.threads,
        )
        assert not sealed.rejected, sealed.rejected[:1]
        result = ledger.validate_block(
            sealed.block,
            parent=parent,
            txs=sealed.result.txs,
            state=leader_state,
            registry=reg,
            now_ms=T0 + 1_000 * (parent.height + 1),
        )
        result.commit(leader_state)
        blocks.append((sealed.block.encode(), [tx.encode() for tx in result.txs]))
        parent = sealed.block
        pending = list(sealed.deferred)
    leader = args.txs / (time.perf_counter() - start)

    # Follower: decode + validate + apply.
    parent = genesis
    start = time.perf_counter()
    for block_bytes, tx_bytes in blocks:
        block = Block.decode(block_bytes)
        txs = [Transaction.decode(data, max_size=params.max_tx_size) for data in tx_bytes]
        ledger.validate_block(
            block,
            parent=parent,
            txs=txs,
            state=follower_state,
            registry=reg,
            now_ms=block.timestamp,
            threads=args.threads,
        ).commit(follower_state)
        parent = block
    follower = args.txs / (time.perf_counter() - start)
    assert follower_state.data == leader_state.data

    print(f"blocks:                      {len(blocks):10d} (up to {args.block} txs each)")
    print(f"leader seal+validate+apply:  {leader:10,.0f} tx/s  ({leader / verify_rate:.2f}x raw)")
    print(f"follower decode+validate+apply:{follower:8,.0f} tx/s  ({follower / verify_rate:.2f}x raw)")
    print(f"signature-check threads:     {args.threads:10d}")


if __name__ == "__main__":
    main()
