"""CID strings: multibase base32 exactly as IPFS writes them."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from chain.core.cid import CID, DAG_CBOR, RAW, _base32
from chain.core.errors import CodecError


def test_the_empty_raw_block_has_the_cid_ipfs_gives_it():
    assert str(CID.of(RAW, b"")) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_base32_equals_the_rfc_4648_encoding_at_every_length():
    rng = random.Random(4648)
    for length in range(0, 90):
        for _ in range(5):
            binary = rng.randbytes(length)
            expected = "b" + base64.b32encode(binary).decode("ascii").lower().rstrip("=")
            assert _base32.__wrapped__(binary) == expected, length
    assert _base32.__wrapped__(b"\xff" * 36) == "b" + "7" * 57 + "4"  # the last letter's unused bits are zero


def test_a_cid_string_round_trips():
    for codec in (RAW, DAG_CBOR):
        cid = CID(codec, hashlib.sha256(bytes([codec])).digest())
        assert CID.decode(str(cid)) == cid


@pytest.mark.parametrize("text", ["", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "Bafk", "bAFK", "b1"])
def test_strings_that_are_not_base32_cids_are_refused(text):
    with pytest.raises(CodecError):
        CID.decode(text)
