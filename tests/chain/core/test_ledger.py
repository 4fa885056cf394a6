"""Tests for the ledger core: transactions, blocks, sealing, validation, state.

A toy transaction type stands in for the apps' types: ``toy.set`` writes
``toy/<key> = value`` and its validator refuses the key ``"forbidden"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core import crypto, dagcbor, ledger
from chain.core.block import Block, Vote, vote_message
from chain.core.cid import CID, DAG_CBOR
from chain.core.consortium import (
    AUTHORITIES_KEY,
    Authority,
    ChainParams,
    authorities_of,
    params_of,
    quorum,
)
from chain.core.merkle import EMPTY_ROOT, merkle_root
from chain.core.reasons import Reason, ValidationError
from chain.core.registry import Field, Registry, RegistryError, TxType, check_payload, reject
from chain.core.state import (
    INITIAL_STATE_HASH,
    DictState,
    Overlay,
    StateChange,
    StateHasher,
    StateView,
    next_state_hash,
    seq_key,
)
from chain.core.transaction import Transaction

CHAIN = "yilian-test"
T0 = 1_700_000_000_000
PARAMS = ChainParams(max_block_txs=50, max_tx_size=1024, max_future_ms=5_000)


def toy_validate(view: StateView, tx: Transaction) -> None:
    if tx.payload["key"] == "forbidden":
        reject("that key is forbidden")


def toy_apply(view: StateView, tx: Transaction) -> list[StateChange]:
    return [StateChange("toy/" + tx.payload["key"], tx.payload["value"])]


TOY_SET = TxType(
    "toy.set",
    {"key": Field(str, max_length=16), "value": Field(int), "note": Field(str, required=False)},
    validate=toy_validate,
    apply=toy_apply,
)


def make_registry() -> Registry:
    registry = ledger.default_registry()
    registry.register(TOY_SET)
    return registry


class Net:
    """A consortium of ``n`` authorities after genesis, with a few users."""

    def __init__(self, n: int = 1, params: ChainParams = PARAMS) -> None:
        self.keys = {f"node{i}": crypto.new_ed25519() for i in range(n)}
        self.authorities = [Authority(k, pair.public) for k, pair in self.keys.items()]
        genesis = ledger.make_genesis(
            chain_id=CHAIN, authorities=self.authorities, timestamp=T0, params=params
        )
        self.genesis = self.sign(genesis, list(self.keys))
        self.state = DictState()
        ledger.validate_genesis(self.genesis).commit(self.state)
        self.registry = make_registry()
        self.users = [crypto.new_ed25519() for _ in range(3)]
        self.seqs: dict[bytes, int] = {}
        self.head = self.genesis

    def sign(self, block: Block, ids: Sequence[str]) -> Block:
        return block.with_votes([block.vote(i, self.keys[i].private) for i in ids])

    def tx(
        self,
        key: str = "k",
        value: int = 1,
        *,
        user: int = 0,
        seq: int | None = None,
        chain_id: str = CHAIN,
        type: str = "toy.set",
        payload: dict[str, Any] | None = None,
        timestamp: int = T0,
        private_key: bytes | None = None,
    ) -> Transaction:
        private = private_key or self.users[user].private
        signer = crypto.ed25519_public(private)
        if seq is None:
            seq = self.seqs.get(signer, 0) + 1
            self.seqs[signer] = seq
        return Transaction.create(
            chain_id=chain_id,
            type=type,
            payload={"key": key, "value": value} if payload is None else payload,
            seq=seq,
            private_key=private,
            timestamp=timestamp,
        )

    def seal(self, pending: Sequence[Transaction], now: int = T0 + 1_000) -> ledger.SealResult:
        return ledger.seal_block(
            parent=self.head,
            pending=pending,
            state=self.state,
            registry=self.registry,
            node_id="node0",
            node_key=self.keys["node0"].private,
            now_ms=now,
        )

    def validate(
        self, block: Block, txs: Sequence[Transaction], now: int = T0 + 1_000, **kw: Any
    ) -> ledger.BlockResult:
        return ledger.validate_block(
            block,
            parent=self.head,
            txs=txs,
            state=self.state,
            registry=self.registry,
            now_ms=now,
            **kw,
        )

    def advance(self, pending: Sequence[Transaction]) -> ledger.SealResult:
        sealed = self.seal(pending)
        block = self.sign(sealed.block, list(self.keys))
        self.validate(block, sealed.result.txs).commit(self.state)
        self.head = block
        return sealed

    def forge(self, txs: Sequence[Transaction], **fields: Any) -> Block:
        """A block over ``txs`` with correct fields except ``fields``, fully signed."""
        overlay = Overlay(self.state)
        hasher = StateHasher(self.head.state_hash)
        for tx in txs:
            with contextlib.suppress(ValidationError):  # the forger does not care
                ledger.apply_transaction(
                    tx,
                    overlay=overlay,
                    registry=self.registry,
                    params=PARAMS,
                    chain_id=CHAIN,
                    latest_ms=T0 + 10_000,
                    hasher=hasher,
                )
        cids = tuple(tx.cid for tx in txs)
        values = {
            "chain_id": CHAIN,
            "height": self.head.height + 1,
            "parent": self.head.cid,
            "timestamp": T0 + 1_000,
            "proposer": "node0",
            "tx_root": merkle_root(cids),
            "txs": cids,
            "state_hash": hasher.digest(),
            **fields,
        }
        return self.sign(Block(**values), list(self.keys))


def reason_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> Reason:
    return excinfo.value.reason


# -- transactions --------------------------------------------------------------


def test_transaction_round_trip() -> None:
    net = Net()
    tx = net.tx("a", 5)
    again = Transaction.decode(tx.encode())
    assert again == tx
    assert again.cid == tx.cid == CID.of(DAG_CBOR, tx.encode())
    assert not again.signature_checked
    again.verify_signature()
    assert again.signature_checked
    assert again.payload == {"key": "a", "value": 5}


def test_signature_covers_every_other_field() -> None:
    net = Net()
    tx = net.tx("a", 5)
    expected = dagcbor.encode(
        {
            "chain_id": tx.chain_id,
            "type": tx.type,
            "payload": tx.payload,
            "signer": tx.signer,
            "seq": tx.seq,
            "timestamp": tx.timestamp,
        }
    )
    assert tx.signing_bytes == expected
    crypto.verify(tx.signer, tx.signature, expected)


@settings(max_examples=100, deadline=None)
@given(
    payload=st.dictionaries(
        st.text(max_size=8), st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40), max_size=4
    ),
    seq=st.integers(1, 2**40),
    timestamp=st.sampled_from([0, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, T0]),
)
def test_decoded_signing_bytes_equal_the_encoding(
    payload: dict[str, Any], seq: int, timestamp: int
) -> None:
    tx = Transaction.create(
        chain_id=CHAIN,
        type="toy.any",
        payload=payload,
        seq=seq,
        private_key=NET.users[0].private,
        timestamp=timestamp,
    )
    decoded = Transaction.decode(tx.encode())
    assert "signing_bytes" in decoded.__dict__  # took the fast path
    assert decoded.signing_bytes == tx.signing_bytes
    decoded.verify_signature()


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"key": "a", "value": 6}},
        {"seq": 2},
        {"timestamp": T0 + 1},
        {"chain_id": "other"},
        {"type": "toy.other"},
    ],
)
def test_changing_a_field_breaks_the_signature(change: dict[str, Any]) -> None:
    net = Net()
    tx = net.tx("a", 5)
    forged = dataclasses.replace(tx, **change)
    with pytest.raises(ValidationError) as excinfo:
        forged.verify_signature()
    assert reason_of(excinfo) is Reason.BAD_SIGNATURE


def test_another_signer_cannot_claim_a_transaction() -> None:
    net = Net()
    tx = net.tx("a", 5)
    forged = dataclasses.replace(tx, signer=net.users[1].public)
    with pytest.raises(ValidationError, match="invalid signature"):
        forged.verify_signature()


NET = Net()
SAMPLE = NET.tx("sample", 42).encode()


@settings(max_examples=150, deadline=None)
@given(bit=st.integers(0, len(SAMPLE) * 8 - 1))
def test_any_bit_flip_in_an_encoded_transaction_is_caught(bit: int) -> None:
    data = bytearray(SAMPLE)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ValidationError) as excinfo:
        Transaction.decode(bytes(data)).verify_signature()
    assert reason_of(excinfo) in {
        Reason.BAD_ENCODING,
        Reason.BAD_SIGNATURE,
        Reason.BAD_TIMESTAMP,
    }


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"chain_id": "x"},
        {**dagcbor.decode(SAMPLE), "extra": 1},
        {**dagcbor.decode(SAMPLE), "seq": 0},
        {**dagcbor.decode(SAMPLE), "seq": True},
        {**dagcbor.decode(SAMPLE), "signer": b"short"},
        {**dagcbor.decode(SAMPLE), "payload": []},
    ],
)
def test_malformed_transactions_are_bad_encoding(value: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Transaction.decode(dagcbor.encode(value))
    assert reason_of(excinfo) is Reason.BAD_ENCODING


def test_decode_refuses_oversize_input_before_parsing() -> None:
    with pytest.raises(ValidationError) as excinfo:
        Transaction.decode(b"\xff" * 100, max_size=99)
    assert reason_of(excinfo) is Reason.OVERSIZE


def test_non_canonical_bytes_are_refused() -> None:
    # The same map with its keys in insertion order instead of DAG-CBOR order.
    value = dagcbor.decode(SAMPLE)
    loose = cbor2.dumps(dict(sorted(value.items(), reverse=True)))
    assert loose != SAMPLE
    with pytest.raises(ValidationError) as excinfo:
        Transaction.decode(loose)
    assert reason_of(excinfo) is Reason.BAD_ENCODING


# -- check_transaction (mempool) --------------------------------------------------


def check(net: Net, tx: Transaction, **kw: Any) -> None:
    ledger.check_transaction(
        tx,
        state=net.state,
        registry=net.registry,
        params=PARAMS,
        chain_id=CHAIN,
        now_ms=T0,
        **kw,
    )


def check_reason(net: Net, tx: Transaction, **kw: Any) -> Reason:
    with pytest.raises(ValidationError) as excinfo:
        check(net, tx, **kw)
    return reason_of(excinfo)


def test_check_accepts_a_good_transaction() -> None:
    net = Net()
    check(net, net.tx())


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"chain_id": "elsewhere"}, Reason.WRONG_CHAIN),
        ({"type": "toy.unknown"}, Reason.UNKNOWN_TYPE),
        ({"payload": {"key": "a"}}, Reason.INVALID_PAYLOAD),
        ({"payload": {"key": "a", "value": 1, "extra": 2}}, Reason.INVALID_PAYLOAD),
        ({"payload": {"key": "a", "value": "1"}}, Reason.INVALID_PAYLOAD),
        ({"payload": {"key": "a", "value": True}}, Reason.INVALID_PAYLOAD),
        ({"payload": {"key": "x" * 17, "value": 1}}, Reason.INVALID_PAYLOAD),
        ({"payload": {"key": "a", "value": 1, "note": None}}, Reason.INVALID_PAYLOAD),
        ({"key": "forbidden"}, Reason.REJECTED),
        ({"timestamp": T0 + 5_001}, Reason.BAD_TIMESTAMP),
        ({"payload": {"key": "a", "value": 1, "note": "n" * 2000}}, Reason.OVERSIZE),
    ],
)
def test_check_rejects(kwargs: dict[str, Any], reason: Reason) -> None:
    net = Net()
    assert check_reason(net, net.tx(**kwargs)) is reason


def test_check_rejects_a_bad_signature() -> None:
    net = Net()
    forged = dataclasses.replace(net.tx(value=1), payload={"key": "k", "value": 2})
    assert check_reason(net, forged) is Reason.BAD_SIGNATURE


def test_check_rejects_replay_and_gaps() -> None:
    net = Net()
    first = net.tx("a")
    net.advance([first])
    assert check_reason(net, first) is Reason.REPLAY
    assert check_reason(net, net.tx("b", seq=3)) is Reason.BAD_SEQ
    check(net, net.tx("c", seq=2))
    check(net, net.tx("d", seq=3), next_seq=3)  # the mempool holds seq 2


# -- state ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 300])
def test_state_hasher_matches_the_definition(n: int) -> None:
    changes = [StateChange(f"k{i}", i if i % 3 else None) for i in range(n)]
    hasher = StateHasher(b"p" * 32)
    hasher.add(changes[: n // 2])
    hasher.add(changes[n // 2 :])
    assert hasher.digest() == next_state_hash(b"p" * 32, changes)


def test_overlay_does_not_touch_the_base_until_committed() -> None:
    base = DictState({"a": 1})
    overlay = Overlay(base)
    overlay.set("a", 2)
    overlay.set("b", 3)
    overlay.set("a", None)
    assert overlay.get("a") is None
    assert overlay.get("b") == 3
    assert base.data == {"a": 1}
    for change in overlay.changes:
        base.set(change.key, change.value)
    assert base.data == {"b": 3}


# -- registry -------------------------------------------------------------------------


def test_registry_refuses_duplicates_and_bad_names() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(TOY_SET)
    for name in ("toy", "Toy.set", "toy.", "toy set", "a." + "b" * 70):
        with pytest.raises(RegistryError):
            TxType(name, {})
    with pytest.raises(RegistryError):
        Field(float)
    assert "toy.set" in registry
    assert registry.names() == ["consensus.evidence", "node.joined", "node.left", "toy.set"]


def test_schema_checks_list_items() -> None:
    schema = {"tags": Field(list, items=str, max_length=2)}
    check_payload(schema, {"tags": ["a", "b"]})
    for bad in ({"tags": ["a", 1]}, {"tags": ["a", "b", "c"]}, {"tags": "ab"}):
        with pytest.raises(ValidationError):
            check_payload(schema, bad)


def test_an_applier_may_not_write_ledger_keys() -> None:
    net = Net()
    net.registry.register(
        TxType(
            "toy.evil",
            {},
            apply=lambda view, tx: [StateChange(AUTHORITIES_KEY, [])],
        )
    )
    net.registry.register(
        TxType("toy.seq", {}, apply=lambda view, tx: [StateChange(seq_key(tx.signer), 0)])
    )
    evil = net.tx(type="toy.evil", payload={})
    sealed = net.seal([evil, net.tx(type="toy.seq", payload={}, user=1)])
    assert [r.error.reason for r in sealed.rejected] == [Reason.REJECTED, Reason.REJECTED]
    assert sealed.block.txs == ()


def test_an_applier_returning_a_float_rejects_only_that_transaction() -> None:
    net = Net()
    net.registry.register(
        TxType("toy.float", {}, apply=lambda view, tx: [StateChange("toy/f", 1.5)])
    )
    bad = net.tx(type="toy.float", payload={}, user=1)
    good = net.tx("fine")
    sealed = net.seal([bad, good])
    assert sealed.block.txs == (good.cid,)
    assert sealed.rejected[0].error.reason is Reason.REJECTED
    net.validate(sealed.block, [good])  # the rejected tx left no trace in the state hash


# -- genesis and quorum ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "needed"), [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (10, 7)]
)
def test_quorum(n: int, needed: int) -> None:
    assert quorum(n) == needed


@pytest.mark.parametrize("n", [1, 4])
def test_genesis(n: int) -> None:
    net = Net(n)
    g = net.genesis
    assert g.height == 0
    assert g.parent is None
    assert g.tx_root == EMPTY_ROOT
    assert len(g.certificate) == n
    assert authorities_of(net.state) == tuple(net.authorities)
    assert params_of(net.state) == PARAMS
    again = Block.decode(g.encode())
    assert again == g
    assert again.cid == g.cid
    ledger.validate_genesis(again, expected_cid=g.cid)


def test_genesis_format_is_the_same_for_any_number_of_authorities() -> None:
    one, four = Net(1).genesis, Net(4).genesis
    assert set(dagcbor.decode(one.encode())) == set(dagcbor.decode(four.encode()))
    assert set(one.genesis.to_cbor()) == set(four.genesis.to_cbor())  # type: ignore[union-attr]


def test_genesis_needs_a_quorum_of_its_authorities() -> None:
    net = Net(4)
    unsigned = dataclasses.replace(net.genesis, certificate=())
    with pytest.raises(ValidationError) as excinfo:
        ledger.validate_genesis(net.sign(unsigned, ["node0", "node1"]))
    assert reason_of(excinfo) is Reason.BAD_CERTIFICATE
    ledger.validate_genesis(net.sign(unsigned, ["node0", "node1", "node2"]))


def test_genesis_other_than_expected_is_refused() -> None:
    net, other = Net(), Net()
    with pytest.raises(ValidationError) as excinfo:
        ledger.validate_genesis(other.genesis, expected_cid=net.genesis.cid)
    assert reason_of(excinfo) is Reason.BAD_GENESIS


def test_genesis_with_a_false_state_hash_is_refused() -> None:
    net = Net()
    forged = dataclasses.replace(net.genesis, state_hash=b"\x00" * 32, certificate=())
    with pytest.raises(ValidationError) as excinfo:
        ledger.validate_genesis(net.sign(forged, ["node0"]))
    assert reason_of(excinfo) is Reason.BAD_STATE_HASH


def test_genesis_state_hash_chains_from_zero() -> None:
    net = Net()
    changes = ledger.validate_genesis(net.genesis).changes
    assert net.genesis.state_hash == next_state_hash(INITIAL_STATE_HASH, list(changes))


# -- sealing and applying ------------------------------------------------------------------


def test_seal_validate_apply_single_node() -> None:
    net = Net()
    txs = [net.tx(f"k{i}", i, user=i % 3) for i in range(9)]
    sealed = net.seal(txs)
    assert sealed.rejected == ()
    assert sealed.deferred == ()
    block = sealed.block
    assert block.height == 1
    assert block.parent == net.genesis.cid
    assert block.txs == tuple(tx.cid for tx in txs)
    assert block.tx_root == merkle_root(block.txs)
    assert [v.authority for v in block.certificate] == ["node0"]
    result = net.validate(block, txs)
    assert result.changes == sealed.result.changes
    result.commit(net.state)
    assert net.state.get("toy/k4") == 4
    assert net.state.get(seq_key(net.users[0].public)) == 3


def test_a_follower_reaches_the_same_state_from_bytes() -> None:
    leader = Net()
    follower_state = DictState(leader.state.data)
    txs = [leader.tx(f"k{i}", i, user=i % 3) for i in range(12)]
    sealed = leader.seal(txs)
    sealed.result.commit(leader.state)
    block = Block.decode(sealed.block.encode())
    wire_txs = [Transaction.decode(tx.encode()) for tx in txs]
    result = ledger.validate_block(
        block,
        parent=Block.decode(leader.genesis.encode()),
        txs=wire_txs,
        state=follower_state,
        registry=make_registry(),
        now_ms=T0 + 1_000,
    )
    result.commit(follower_state)
    assert follower_state.data == leader.state.data
    assert all(tx.signature_checked for tx in wire_txs)


def test_seal_reports_bad_transactions_and_keeps_the_rest() -> None:
    net = Net()
    good = net.tx("good")
    forged = dataclasses.replace(net.tx("x", user=1), payload={"key": "y", "value": 1})
    unknown = net.tx(type="toy.nope", payload={}, user=2)
    forbidden = net.tx("forbidden", user=2, seq=1)
    sealed = net.seal([good, forged, unknown, forbidden, good])
    assert sealed.block.txs == (good.cid,)
    assert [(r.tx, r.error.reason) for r in sealed.rejected] == [
        (forged, Reason.BAD_SIGNATURE),
        (unknown, Reason.UNKNOWN_TYPE),
        (forbidden, Reason.REJECTED),
        (good, Reason.REPLAY),
    ]


def test_seal_defers_when_full_and_when_a_seq_is_missing() -> None:
    net = Net(params=ChainParams(max_block_txs=3))
    net.state.set("chain/params", ChainParams(max_block_txs=3).to_cbor())
    early = net.tx("a", seq=1)
    later = net.tx("b", seq=3)
    orphan = net.tx("c", seq=2, user=1)
    others = [net.tx(f"o{i}", user=2) for i in range(3)]
    sealed = net.seal([later, early, orphan, *others])
    assert sealed.block.txs == (early.cid, others[0].cid, others[1].cid)
    assert set(sealed.deferred) == {later, orphan, others[2]}
    assert sealed.rejected == ()


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(list(range(8))))
def test_seal_puts_any_arrival_order_back_in_sequence(order: list[int]) -> None:
    net = NET_FOR_ORDER
    txs = ORDER_TXS
    sealed = net.seal([txs[i] for i in order])
    assert sealed.block.txs == tuple(tx.cid for tx in txs)
    net.validate(sealed.block, sealed.result.txs)


NET_FOR_ORDER = Net()
ORDER_TXS = [NET_FOR_ORDER.tx(f"k{i}", i) for i in range(8)]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_block_with_one_signers_transactions_reordered_is_refused(data: st.DataObject) -> None:
    net = NET_FOR_ORDER
    i = data.draw(st.integers(0, 6))
    j = data.draw(st.integers(i + 1, 7))
    txs = list(ORDER_TXS)
    txs[i], txs[j] = txs[j], txs[i]
    with pytest.raises(ValidationError) as excinfo:
        net.validate(net.forge(txs), txs)
    assert reason_of(excinfo) is Reason.BAD_SEQ


def test_a_replayed_transaction_is_refused_in_a_later_block() -> None:
    net = Net()
    tx = net.tx("a")
    net.advance([tx])
    with pytest.raises(ValidationError) as excinfo:
        net.validate(net.forge([tx]), [tx])
    assert reason_of(excinfo) is Reason.REPLAY


def test_the_same_transaction_twice_in_a_block_is_a_replay() -> None:
    net = Net()
    tx = net.tx("a")
    with pytest.raises(ValidationError) as excinfo:
        net.validate(net.forge([tx, tx]), [tx, tx])
    assert reason_of(excinfo) is Reason.REPLAY
    assert "transaction 1" in str(excinfo.value)


def test_seal_refuses_a_node_that_is_not_an_authority() -> None:
    net = Net()
    with pytest.raises(ValidationError) as excinfo:
        ledger.seal_block(
            parent=net.head,
            pending=[],
            state=net.state,
            registry=net.registry,
            node_id="node0",
            node_key=crypto.new_ed25519().private,
        )
    assert reason_of(excinfo) is Reason.BAD_PROPOSER


def test_a_chain_of_blocks() -> None:
    net = Net()
    for round_ in range(3):
        net.advance([net.tx(f"r{round_}", round_, user=u) for u in range(3)])
    assert net.head.height == 3
    assert net.state.get("toy/r2") == 2
    assert net.state.get(seq_key(net.users[2].public)) == 3


# -- block validation: one test per reason ------------------------------------------------


def block_reason(net: Net, block: Block, txs: Sequence[Transaction], **kw: Any) -> Reason:
    with pytest.raises(ValidationError) as excinfo:
        net.validate(block, txs, **kw)
    return reason_of(excinfo)


def test_forge_helper_makes_valid_blocks() -> None:
    net = Net()
    txs = [net.tx("a"), net.tx("b")]
    net.validate(net.forge(txs), txs)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"height": 2}, Reason.BAD_HEIGHT),
        ({"parent": CID.of(DAG_CBOR, b"elsewhere")}, Reason.BROKEN_LINK),
        ({"chain_id": "other-chain"}, Reason.WRONG_CHAIN),
        ({"timestamp": T0 - 1}, Reason.BAD_TIMESTAMP),
        ({"timestamp": T0 + 1_000 + 5_001}, Reason.BAD_TIMESTAMP),
        ({"tx_root": b"\x07" * 32}, Reason.BAD_MERKLE_ROOT),
        ({"state_hash": b"\x07" * 32}, Reason.BAD_STATE_HASH),
        ({"proposer": "stranger"}, Reason.BAD_PROPOSER),
    ],
)
def test_block_field_errors(fields: dict[str, Any], reason: Reason) -> None:
    net = Net()
    txs = [net.tx("a")]
    assert block_reason(net, net.forge(txs, **fields), txs) is reason


def test_block_carrying_genesis_data_is_refused() -> None:
    net = Net()
    block = net.forge([], genesis=net.genesis.genesis)
    assert block_reason(net, block, []) is Reason.BAD_GENESIS


def test_block_with_a_forged_transaction_is_refused() -> None:
    net = Net()
    forged = dataclasses.replace(net.tx("a", 1), payload={"key": "a", "value": 1_000})
    assert block_reason(net, net.forge([forged]), [forged]) is Reason.BAD_SIGNATURE


def test_signatures_checked_in_other_processes_mark_only_the_good_ones() -> None:
    net = Net()
    signed = [net.tx("a", 1), net.tx("b", 2), net.tx("c", 3)]
    signed[1] = dataclasses.replace(signed[1], payload={"key": "b", "value": 1_000})
    # decoded afresh, as from a store: no signature is known to be checked yet
    txs = [Transaction.decode(tx.encoded) for tx in signed]
    assert not any(tx.signature_checked for tx in txs)
    with crypto.signature_processes(1) as pool:
        check = ledger.start_signature_check(txs, pool, parts=2)
        check.wait()
    assert [tx.signature_checked for tx in txs] == [True, False, True]
    assert block_reason(net, net.forge(txs), txs) is Reason.BAD_SIGNATURE


def test_block_whose_transaction_fails_its_validator_is_refused() -> None:
    net = Net()
    tx = net.tx("forbidden")
    assert block_reason(net, net.forge([tx]), [tx]) is Reason.REJECTED


def test_block_with_oversize_transaction_is_refused() -> None:
    net = Net()
    tx = net.tx(payload={"key": "a", "value": 1, "note": "n" * 2_000})
    assert block_reason(net, net.forge([tx]), [tx]) is Reason.OVERSIZE


def test_block_with_a_transaction_from_the_future_is_refused() -> None:
    net = Net()
    tx = net.tx("a", timestamp=T0 + 1_000 + 5_001)
    assert block_reason(net, net.forge([tx]), [tx]) is Reason.BAD_TIMESTAMP


def test_block_with_a_transaction_for_another_chain_is_refused() -> None:
    net = Net()
    tx = net.tx("a", chain_id="other")
    assert block_reason(net, net.forge([tx]), [tx]) is Reason.WRONG_CHAIN


def test_block_with_unknown_or_invalid_payloads_is_refused() -> None:
    net = Net()
    unknown = net.tx(type="toy.nope", payload={})
    assert block_reason(net, net.forge([unknown]), [unknown]) is Reason.UNKNOWN_TYPE
    invalid = net.tx(payload={"key": 1, "value": 1}, user=1)
    assert block_reason(net, net.forge([invalid]), [invalid]) is Reason.INVALID_PAYLOAD


def test_block_with_other_transaction_bodies_is_refused() -> None:
    net = Net()
    txs = [net.tx("a"), net.tx("b")]
    block = net.forge(txs)
    assert block_reason(net, block, txs[:1]) is Reason.TX_MISMATCH
    assert block_reason(net, block, [txs[1], txs[0]]) is Reason.TX_MISMATCH


def test_block_with_too_many_transactions_is_refused() -> None:
    net = Net()
    txs = [net.tx(f"k{i}", user=i % 3) for i in range(PARAMS.max_block_txs + 1)]
    assert block_reason(net, net.forge(txs), txs) is Reason.TOO_MANY_TXS


def test_block_with_a_transaction_that_skips_a_seq_is_refused() -> None:
    net = Net()
    tx = net.tx("a", seq=2)
    assert block_reason(net, net.forge([tx]), [tx]) is Reason.BAD_SEQ


# -- certificates (n = 4: three votes needed) ---------------------------------------------


def proposal(net: Net) -> tuple[Block, list[Transaction]]:
    txs = [net.tx("a")]
    return net.seal(txs).block, txs


def test_n4_needs_three_votes() -> None:
    net = Net(4)
    block, txs = proposal(net)
    assert len(block.certificate) == 1
    net.validate(block, txs, require_quorum=False)  # what a voter checks
    assert block_reason(net, block, txs) is Reason.BAD_CERTIFICATE
    two = net.sign(block, ["node1"])
    assert block_reason(net, two, txs) is Reason.BAD_CERTIFICATE
    three = net.sign(two, ["node3"])
    net.validate(three, txs)
    assert [v.authority for v in three.certificate] == ["node0", "node1", "node3"]
    assert three.cid == block.cid  # votes do not change the block's name


def test_votes_merge_idempotently() -> None:
    net = Net(4)
    block, _ = proposal(net)
    signed = net.sign(block, ["node1", "node2"])
    assert net.sign(signed, ["node1", "node2"]).certificate == signed.certificate


def test_a_forged_vote_is_refused() -> None:
    net = Net(4)
    block, txs = proposal(net)
    fake = Vote("node2", crypto.sign(crypto.new_ed25519().private, vote_message(block.cid)))
    forged = net.sign(block, ["node1"]).with_votes([fake])
    assert block_reason(net, forged, txs) is Reason.BAD_CERTIFICATE


def test_a_vote_for_another_block_is_refused() -> None:
    net = Net(4)
    block, txs = proposal(net)
    other = net.forge([], timestamp=T0 + 2_000)
    moved = net.sign(block, ["node1"]).with_votes([other.vote("node2", net.keys["node2"].private)])
    assert block_reason(net, moved, txs) is Reason.BAD_CERTIFICATE


def test_a_vote_by_a_stranger_is_refused() -> None:
    net = Net(4)
    block, txs = proposal(net)
    stranger = crypto.new_ed25519()
    signed = net.sign(block, ["node1", "node2"]).with_votes([block.vote("zed", stranger.private)])
    assert block_reason(net, signed, txs) is Reason.BAD_CERTIFICATE


def test_the_proposer_must_have_voted() -> None:
    net = Net(4)
    block, txs = proposal(net)
    without = net.sign(dataclasses.replace(block, certificate=()), ["node1", "node2", "node3"])
    assert block_reason(net, without, txs) is Reason.BAD_PROPOSER


def precommits(net: Net, block: Block, ids: Sequence[str], round_: int) -> list[Vote]:
    """Consensus precommits for ``block`` at ``round_`` by ``ids``."""
    return [
        Vote(i, crypto.sign(net.keys[i].private, ledger.precommit_message(block, i, round_)), round_) for i in ids
    ]


def test_a_block_decided_by_consensus_carries_the_precommits_of_its_round() -> None:
    net = Net(4)
    block, txs = proposal(net)
    decided = block.with_certificate(precommits(net, block, ["node1", "node2", "node3"], 2))
    net.validate(decided, txs)  # the proposer need not be among them
    assert decided.cid == block.cid
    assert Block.decode(decided.encode()).certificate == decided.certificate
    assert [v.round for v in decided.certificate] == [2, 2, 2]
    two = block.with_certificate(precommits(net, block, ["node1", "node2"], 2))
    assert block_reason(net, two, txs) is Reason.BAD_CERTIFICATE


def test_precommits_of_mixed_rounds_or_signed_for_another_round_are_refused() -> None:
    net = Net(4)
    block, txs = proposal(net)
    mixed = precommits(net, block, ["node1", "node2"], 1) + precommits(net, block, ["node3"], 2)
    assert block_reason(net, block.with_certificate(mixed), txs) is Reason.BAD_CERTIFICATE
    relabelled = [dataclasses.replace(v, round=3) for v in precommits(net, block, ["node1", "node2", "node3"], 2)]
    assert block_reason(net, block.with_certificate(relabelled), txs) is Reason.BAD_CERTIFICATE


def test_certificate_order_is_canonical() -> None:
    net = Net(4)
    block, _ = proposal(net)
    votes = net.sign(block, ["node3", "node1"]).certificate
    with pytest.raises(ValidationError) as excinfo:
        dataclasses.replace(block, certificate=tuple(reversed(votes)))
    assert reason_of(excinfo) is Reason.BAD_ENCODING


def test_block_encoding_round_trip_and_certificate_object() -> None:
    net = Net(4)
    block, _ = proposal(net)
    signed = net.sign(block, ["node1", "node2"])
    again = Block.decode(signed.encode())
    assert again == signed
    assert again.cid == CID.of(DAG_CBOR, again.header_bytes)
    cert = dagcbor.decode(signed.certificate_bytes())
    assert cert["block"] == signed.cid
    assert len(cert["votes"]) == 3


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: {**v, "extra": 1},
        lambda v: {k: x for k, x in v.items() if k != "certificate"},
        lambda v: {**v, "genesis": None},
        lambda v: {**v, "height": -1},
        lambda v: {**v, "tx_root": b"short"},
        lambda v: {**v, "txs": [b"not a cid"]},
        lambda v: {**v, "certificate": [["node0"]]},
    ],
)
def test_malformed_blocks_are_bad_encoding(mutate: Any) -> None:
    net = Net()
    value = dagcbor.decode(net.genesis.encode())
    value.pop("genesis")
    with pytest.raises(ValidationError) as excinfo:
        Block.decode(dagcbor.encode(mutate(value)))
    assert reason_of(excinfo) is Reason.BAD_ENCODING


# -- membership ---------------------------------------------------------------------------


def test_a_node_joins_and_the_quorum_grows_from_the_next_block() -> None:
    net = Net(1)
    newcomer = crypto.new_ed25519()
    joined = net.tx(
        type="node.joined",
        payload={"id": "node1", "public_key": newcomer.public},
        private_key=net.keys["node0"].private,
    )
    net.advance([joined])
    assert [a.id for a in authorities_of(net.state)] == ["node0", "node1"]
    net.keys["node1"] = newcomer
    block, txs = proposal(net)
    assert block_reason(net, block, txs) is Reason.BAD_CERTIFICATE  # 2 of 2 needed now
    net.validate(net.sign(block, ["node1"]), txs)


def test_only_an_authority_changes_membership() -> None:
    net = Net(1)
    by_user = net.tx(type="node.joined", payload={"id": "x", "public_key": b"k" * 32})
    sealed = net.seal([by_user])
    assert sealed.rejected[0].error.reason is Reason.REJECTED


def test_membership_needs_a_quorum_of_current_authorities() -> None:
    net = Net(4)
    newcomer = crypto.new_ed25519()

    def approve(node: str, key: bytes = newcomer.public) -> Transaction:
        payload = {"id": "node4", "public_key": key}
        return net.tx(type="node.joined", payload=payload, private_key=net.keys[node].private)

    net.advance([approve("node0")])
    net.advance([approve("node1")])
    assert len(authorities_of(net.state)) == 4  # 2 of the 3 approvals needed
    again = net.seal([approve("node1")])
    assert "already approved" in again.rejected[0].error.message
    other_key = net.seal([approve("node2", crypto.new_ed25519().public)])
    assert "another key" in other_key.rejected[0].error.message
    net.advance([approve("node3")])
    assert [a.id for a in authorities_of(net.state)] == ["node0", "node1", "node2", "node3", "node4"]
    assert net.state.get("chain/membership/join/node4") is None


def test_membership_rules() -> None:
    net = Net(2)
    admin = net.keys["node0"].private
    dup_id = net.tx(
        type="node.joined", payload={"id": "node1", "public_key": b"k" * 32}, private_key=admin
    )
    short_key = net.tx(
        type="node.joined", payload={"id": "n9", "public_key": b"k"}, private_key=admin, seq=1
    )
    sealed = net.seal([dup_id, short_key])
    assert [r.error.reason for r in sealed.rejected] == [Reason.REJECTED, Reason.REJECTED]
    left = net.tx(type="node.left", payload={"id": "node1"}, private_key=admin, seq=1)
    net.advance([left])
    assert [a.id for a in authorities_of(net.state)] == ["node0", "node1"]  # 1 approval of the 2 needed
    agreed = net.tx(type="node.left", payload={"id": "node1"}, private_key=net.keys["node1"].private)
    net.advance([agreed])
    assert [a.id for a in authorities_of(net.state)] == ["node0"]
    last = net.tx(type="node.left", payload={"id": "node0"}, private_key=admin)
    assert net.seal([last]).rejected[0].error.reason is Reason.REJECTED


def test_a_short_signature_decodes_but_never_verifies() -> None:
    value = {**dagcbor.decode(SAMPLE), "signature": b"s" * 63}
    tx = Transaction.decode(dagcbor.encode(value))
    assert "signing_bytes" not in tx.__dict__  # layout differs: falls back to encoding
    assert tx.signing_bytes == Transaction.decode(SAMPLE).signing_bytes
    with pytest.raises(ValidationError) as excinfo:
        tx.verify_signature()
    assert reason_of(excinfo) is Reason.BAD_SIGNATURE
