"""DAG-PB: canonical encoding, strict decoding, mutation resistance."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.core.cid import CID, DAG_CBOR, DAG_PB, RAW
from chain.core.dagpb import (
    PBLink,
    PBNode,
    decode_link,
    decode_node,
    encode_link,
    encode_node,
    is_canonical,
)
from chain.core.errors import CodecError

LEAF = CID.of(RAW, b"leaf")
LEAF_BYTES = LEAF.to_bytes()


HASH_FIELD = b"\x0a\x24" + LEAF_BYTES
NAME_FIELD = b"\x12\x01a"
TSIZE_FIELD = b"\x18\x05"


def _links_field(body: bytes) -> bytes:
    return b"\x12" + bytes([len(body)]) + body


# -- known encodings ----------------------------------------------------------------
def test_empty_node_is_empty_bytes():
    assert encode_node(PBNode()) == b""
    assert decode_node(b"") == PBNode((), None)


def test_empty_data_differs_from_absent_data():
    assert encode_node(PBNode((), b"")) == b"\x0a\x00"
    assert decode_node(b"\x0a\x00") == PBNode((), b"")


def test_links_are_written_before_data_and_link_fields_in_order():
    node = PBNode((PBLink(LEAF, "a", 5),), b"xy")
    body = HASH_FIELD + NAME_FIELD + TSIZE_FIELD
    assert encode_link(node.links[0]) == body
    assert encode_node(node) == _links_field(body) + b"\x0a\x02xy"


def test_absent_name_and_tsize_are_omitted_empty_name_is_kept():
    assert encode_link(PBLink(LEAF)) == HASH_FIELD
    assert encode_link(PBLink(LEAF, "")) == HASH_FIELD + b"\x12\x00"
    assert decode_link(HASH_FIELD) == PBLink(LEAF, None, None)
    assert decode_link(HASH_FIELD + b"\x12\x00") == PBLink(LEAF, "", None)


def test_large_tsize_and_long_name_round_trip():
    link = PBLink(CID.of(DAG_PB, b"n"), "名" * 100, 2**63 - 1)
    node = PBNode((link, link), None)
    assert decode_node(encode_node(node)) == node


# -- strict decoding --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "raw"),
    [
        ("duplicate Data", b"\x0a\x01x\x0a\x01y"),
        ("unknown node field", b"\x1a\x00"),
        ("Links as varint", b"\x10\x01"),
        ("Data as varint", b"\x08\x01"),
        ("field number 0", b"\x02\x00"),
        ("truncated Data", b"\x0a\x05ab"),
        ("truncated key varint", b"\x8a"),
        ("non-minimal length", b"\x0a\x81\x00"),
        ("links, data, links", _links_field(HASH_FIELD) + b"\x0a\x00" + _links_field(HASH_FIELD)),
        ("link without Hash", _links_field(TSIZE_FIELD)),
        ("Name before Hash", _links_field(NAME_FIELD + HASH_FIELD)),
        ("Tsize before Name", _links_field(HASH_FIELD + TSIZE_FIELD + NAME_FIELD)),
        ("duplicate Hash", _links_field(HASH_FIELD + HASH_FIELD)),
        ("duplicate Tsize", _links_field(HASH_FIELD + TSIZE_FIELD + TSIZE_FIELD)),
        ("unknown link field", _links_field(HASH_FIELD + b"\x20\x01")),
        ("Hash as varint", _links_field(b"\x08\x01")),
        ("Tsize as bytes", _links_field(HASH_FIELD + b"\x1a\x01\x05")),
        ("Name not UTF-8", _links_field(HASH_FIELD + b"\x12\x01\xff")),
        ("Hash not a CID", _links_field(b"\x0a\x03abc")),
        ("CIDv0 Hash", _links_field(b"\x0a\x22\x12\x20" + bytes(32))),
        ("truncated link", b"\x12\x30" + HASH_FIELD[:10]),
        ("truncated Tsize", _links_field(HASH_FIELD + b"\x18\x80")),
    ],
)
def test_decoder_rejects(label, raw):
    with pytest.raises(CodecError):
        decode_node(raw)


def test_legacy_data_first_order_is_accepted_but_not_canonical():
    legacy = b"\x0a\x02xy" + _links_field(HASH_FIELD)
    node = decode_node(legacy)
    assert node == PBNode((PBLink(LEAF),), b"xy")
    assert encode_node(node) != legacy
    assert not is_canonical(legacy)
    assert is_canonical(encode_node(node))


def test_decoder_accepts_memoryview_and_bytearray():
    raw = encode_node(PBNode((PBLink(LEAF, "", 3),), b"d"))
    assert decode_node(memoryview(raw)) == decode_node(bytearray(raw)) == decode_node(raw)


# -- properties -------------------------------------------------------------------------
cids = st.builds(CID.of, st.sampled_from([RAW, DAG_PB, DAG_CBOR]), st.binary(max_size=8))
links = st.builds(
    PBLink,
    cids,
    st.one_of(st.none(), st.text(max_size=12)),
    st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)
nodes = st.builds(
    PBNode,
    st.lists(links, max_size=5).map(tuple),
    st.one_of(st.none(), st.binary(max_size=40)),
)


@given(nodes)
def test_encode_decode_round_trip(node):
    raw = encode_node(node)
    assert decode_node(raw) == node
    assert is_canonical(raw)


@st.composite
def mutated(draw):
    """A canonical node and a different byte string derived from it."""
    node = draw(nodes)
    raw = encode_node(node)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if kind == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        mask = draw(st.integers(1, 255))
        out = raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]
    elif kind == "truncate" and raw:
        out = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "delete" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        out = raw[:i] + raw[i + 1 :]
    else:
        i = draw(st.integers(0, len(raw)))
        out = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i:]
    return node, raw, out


@given(mutated())
def test_mutated_nodes_never_pass_for_the_original(case):
    """A mutation is rejected, or decodes to a *different* node, or is the one
    tolerated non-canonical form (Data before Links). In every case its CID
    differs, so the store (which checks hashes) can never confuse the two."""
    node, raw, out = case
    assert CID.of(DAG_PB, out) != CID.of(DAG_PB, raw)
    try:
        decoded = decode_node(out)
    except CodecError:
        return
    if encode_node(decoded) == out:
        assert decoded != node  # the decoder is injective on canonical bytes
    else:
        assert out[0] == 0x0A
        assert decoded.links
        assert decoded.data is not None
