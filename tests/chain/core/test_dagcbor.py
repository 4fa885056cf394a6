"""Tests for chain.core.dagcbor: one value, one encoding, and nothing else decodes."""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core import dagcbor
from chain.core.cid import CID, DAG_CBOR, RAW
from chain.core.errors import CodecError

cids = st.builds(CID.of, st.sampled_from([RAW, DAG_CBOR]), st.binary(max_size=16))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | cids
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_round_trip(value: Any) -> None:
    data = dagcbor.encode(value)
    assert dagcbor.decode(data) == value
    assert dagcbor.encode(dagcbor.decode(data)) == data


@settings(max_examples=100, deadline=None)
@given(
    mapping=st.dictionaries(st.text(max_size=8), st.integers(-1000, 1000), max_size=12),
    seed=st.integers(),
)
def test_encoding_ignores_insertion_order(mapping: dict[str, int], seed: int) -> None:
    items = list(mapping.items())
    random.Random(seed).shuffle(items)
    assert dagcbor.encode(dict(items)) == dagcbor.encode(mapping)


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(max_size=6), unique=True, max_size=10))
def test_map_keys_sort_length_first_then_bytewise(keys: list[str]) -> None:
    decoded_order = list(cbor2.loads(dagcbor.encode(dict.fromkeys(keys, 0))))
    expected = sorted(keys, key=lambda k: (len(k.encode()), k.encode()))
    assert decoded_order == expected


@settings(max_examples=100, deadline=None)
@given(value=values, extra=st.binary(min_size=1, max_size=3))
def test_trailing_bytes_are_rejected(value: Any, extra: bytes) -> None:
    with pytest.raises(CodecError):
        dagcbor.decode(dagcbor.encode(value) + extra)


def test_known_bytes() -> None:
    assert dagcbor.encode({"a": 1, "bb": [True, None], "c": b"\x01"}).hex() == (
        "a36161016163410162626282f5f6"
    )


def test_cid_is_tag_42_with_a_zero_prefix() -> None:
    cid = CID.of(DAG_CBOR, b"block")
    data = dagcbor.encode(cid)
    assert data[:2] == bytes.fromhex("d82a")
    assert data[2:4] == bytes([0x58, 37])  # byte string of 1 + 36 bytes
    assert data[4] == 0
    assert data[5:] == cid.to_bytes()
    assert dagcbor.decode(data) == cid


def test_tuples_encode_as_arrays() -> None:
    assert dagcbor.encode((1, 2)) == dagcbor.encode([1, 2])


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        [0.0],
        {"x": float("nan")},
        {1: "integer key"},
        {b"k": 1},
        {1, 2},
        2**64,
        -(2**64) - 1,
        cbor2.undefined,
        cbor2.CBORTag(1, 0),
        object(),
    ],
)
def test_values_outside_the_subset_are_refused(value: Any) -> None:
    with pytest.raises(CodecError):
        dagcbor.encode(value)


def test_deep_nesting_is_refused() -> None:
    value: Any = 0
    for _ in range(dagcbor.MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(CodecError, match="nesting"):
        dagcbor.encode(value)


@pytest.mark.parametrize(
    ("hex_data", "why"),
    [
        ("", "empty"),
        ("1817", "non-minimal integer"),
        ("190017", "non-minimal integer"),
        ("7800", "non-minimal length"),
        ("a2616201616101", "unsorted keys"),
        ("a2626161016162 02".replace(" ", ""), "longer key first"),
        ("a2616101616102", "duplicate key"),
        ("0100", "trailing bytes"),
        ("f93c00", "half float"),
        ("fb3ff8000000000000", "double"),
        ("f7", "undefined"),
        ("e0", "simple value"),
        ("c11a514b67b0", "epoch datetime tag"),
        ("c24101", "bignum"),
        ("c249010000000000000000", "bignum beyond 2**64 - 1 (its canonical encoding)"),
        ("c349010000000000000000", "negative bignum beyond -2**64"),
        ("d9ffff00", "unknown tag"),
        ("d82a4401616263", "tag 42 without the zero prefix"),
        ("d82a6161", "tag 42 over text"),
        ("d82a4400616263", "tag 42 over a non-CID"),
        ("d82a5826008100551220" + "00" * 32, "tag 42 over a CID with a non-minimal version varint"),
        ("d82a5826000155122000" + "00" * 31 + "00", "tag 42 over a CID with a trailing byte"),
        ("62c328", "invalid UTF-8"),
        ("9f01ff", "indefinite array"),
        ("5f4101ff", "indefinite bytes"),
        ("a1016161", "integer key"),
        ("18", "truncated"),
    ],
)
def test_non_canonical_or_foreign_input_is_rejected(hex_data: str, why: str) -> None:
    with pytest.raises(CodecError):
        dagcbor.decode(bytes.fromhex(hex_data))


def test_overly_nested_input_is_rejected() -> None:
    with pytest.raises(CodecError):
        dagcbor.decode(b"\x81" * (dagcbor.MAX_DEPTH + 2) + b"\x00")
