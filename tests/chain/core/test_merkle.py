"""Tests for chain.core.merkle: roots, promotion, and proofs that cannot be bent."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core.cid import CID, DAG_CBOR
from chain.core.errors import CodecError
from chain.core.merkle import (
    EMPTY_ROOT,
    MerkleProof,
    ProofStep,
    leaf_hash,
    merkle_proof,
    merkle_root,
    node_hash,
    verify_proof,
)


def make_leaves(n: int) -> list[CID]:
    return [CID.of(DAG_CBOR, f"tx{i}".encode()) for i in range(n)]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_hashes_are_domain_separated() -> None:
    (a,) = make_leaves(1)
    assert leaf_hash(a) == sha(b"\x00" + a.to_bytes())
    assert node_hash(b"l" * 32, b"r" * 32) == sha(b"\x01" + b"l" * 32 + b"r" * 32)


def test_small_roots_by_hand() -> None:
    a, b, c = make_leaves(3)
    la, lb, lc = leaf_hash(a), leaf_hash(b), leaf_hash(c)
    assert merkle_root([]) == EMPTY_ROOT == sha(b"")
    assert merkle_root([a]) == la
    assert merkle_root([a, b]) == node_hash(la, lb)
    # The odd leaf is promoted, not paired with itself.
    assert merkle_root([a, b, c]) == node_hash(node_hash(la, lb), lc)


def test_duplicating_the_last_leaf_changes_the_root() -> None:
    a, b, c = make_leaves(3)
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


def test_order_matters() -> None:
    a, b = make_leaves(2)
    assert merkle_root([a, b]) != merkle_root([b, a])


def test_leaves_may_be_raw_cid_bytes() -> None:
    leaves = make_leaves(5)
    assert merkle_root(leaves) == merkle_root([c.to_bytes() for c in leaves])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_every_proof_verifies_and_survives_json(n: int, data: st.DataObject) -> None:
    leaves = make_leaves(n)
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = merkle_proof(leaves, index)
    assert verify_proof(root, leaves[index], proof, leaf_count=n)
    again = MerkleProof.from_dict(json.loads(json.dumps(proof.to_dict())))
    assert again == proof
    assert verify_proof(root, leaves[index], again)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_any_altered_byte_fails(n: int, data: st.DataObject) -> None:
    leaves = make_leaves(n)
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = merkle_proof(leaves, index)
    step = data.draw(st.integers(0, len(proof.path) - 1))
    bit = data.draw(st.integers(0, 255))
    path = list(proof.path)
    path[step] = ProofStep(path[step].side, flip_bit(path[step].hash, bit))
    assert not verify_proof(root, leaves[index], MerkleProof(index, n, tuple(path)))
    assert not verify_proof(flip_bit(root, bit), leaves[index], proof)
    leaf = leaves[index].to_bytes()
    assert not verify_proof(
        root, flip_bit(leaf, data.draw(st.integers(0, len(leaf) * 8 - 1))), proof
    )


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 13])
def test_a_proof_proves_the_position(n: int) -> None:
    leaves = make_leaves(n)
    root = merkle_root(leaves)
    for index in range(n):
        proof = merkle_proof(leaves, index)
        for other in range(n):
            moved = MerkleProof(other, n, proof.path)
            assert verify_proof(root, leaves[index], moved) is (other == index)


def test_sides_that_disagree_with_the_index_fail() -> None:
    leaves = make_leaves(4)
    proof = merkle_proof(leaves, 1)
    swapped = tuple(ProofStep("right" if s.side == "left" else "left", s.hash) for s in proof.path)
    assert not verify_proof(merkle_root(leaves), leaves[1], MerkleProof(1, 4, swapped))


def test_a_proof_for_another_tree_size_fails_when_the_count_is_given() -> None:
    leaves = make_leaves(5)
    proof = merkle_proof(leaves, 0)
    assert not verify_proof(merkle_root(leaves), leaves[0], proof, leaf_count=6)


def test_out_of_range() -> None:
    leaves = make_leaves(3)
    with pytest.raises(IndexError):
        merkle_proof(leaves, 3)
    assert not verify_proof(merkle_root(leaves), leaves[0], MerkleProof(3, 3, ()))


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"format": 2, "index": 0, "leaf_count": 1, "path": []},
        {"format": 1, "index": "0", "leaf_count": 1, "path": []},
        {"format": 1, "index": 0, "leaf_count": 2, "path": [{"side": "up", "hash": "00" * 32}]},
        {"format": 1, "index": 0, "leaf_count": 2, "path": [{"side": "left", "hash": "zz"}]},
        {"format": 1, "index": 0, "leaf_count": 2, "path": [{"side": "left", "hash": "00"}]},
    ],
)
def test_malformed_proof_dicts_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(CodecError):
        MerkleProof.from_dict(bad)
