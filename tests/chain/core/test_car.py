"""CARv1: canonical header, DFS parent-first export, verifying streaming reader."""

import asyncio
import concurrent.futures
import io
import random

import cbor2
import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ipfs_car_decoder import FileByteStream, stream_bytes
from multiformats import CID as MfCID

from chain.core import varint
from chain.core.car import (
    CarReader,
    CarWriter,
    block_links,
    decode_header,
    encode_header,
    read_car,
    walk_dag,
    write_car,
)
from chain.core.cid import CID, DAG_CBOR, DAG_PB, RAW
from chain.core.errors import CodecError, IntegrityError
from chain.core.unixfs import KUBO_DEFAULT, ChunkParams, build_bytes


def run_in_fresh_loop(coroutine_function):
    """asyncio.run in a worker thread: a session-wide Playwright loop may be running in this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_function())).result()


def _dag(data: bytes, params: ChunkParams):
    result, blocks = build_bytes(data, params)
    return result.root, dict(blocks)


def _car(roots, store) -> bytes:
    out = io.BytesIO()
    write_car(out, roots, store.__getitem__)
    return out.getvalue()


# -- header ---------------------------------------------------------------------------
def test_header_is_canonical_dag_cbor():
    roots = [CID.of(DAG_PB, b"a"), CID.of(RAW, b"b")]
    ours = encode_header(roots)
    tagged = [cbor2.CBORTag(42, b"\x00" + r.to_bytes()) for r in roots]
    assert ours == cbor2.dumps({"version": 1, "roots": tagged}, canonical=True)
    mf_roots = [MfCID.decode(str(r)) for r in roots]
    assert ours == dag_cbor.encode({"roots": mf_roots, "version": 1})
    assert ours.index(b"roots") < ours.index(b"version")
    assert decode_header(ours).roots == tuple(roots)


def test_header_with_no_roots_and_many_roots():
    assert decode_header(encode_header([])).roots == ()
    many = [CID.of(RAW, bytes([i])) for i in range(30)]  # array length > 23
    assert decode_header(encode_header(many)).roots == tuple(many)


@pytest.mark.parametrize(
    ("label", "header"),
    [
        ("not a map", cbor2.dumps([1])),
        ("version 2", cbor2.dumps({"version": 2})),
        ("version missing", cbor2.dumps({"roots": []})),
        ("version true", cbor2.dumps({"roots": [], "version": True})),
        ("roots missing", cbor2.dumps({"version": 1})),
        ("roots not CIDs", cbor2.dumps({"roots": [b"x"], "version": 1})),
        ("extra key", cbor2.dumps({"roots": [], "version": 1, "x": 1})),
        ("bad tag 42", cbor2.dumps({"roots": [cbor2.CBORTag(42, b"\x01")], "version": 1})),
        ("trailing bytes", encode_header([]) + b"\x00"),
        ("truncated", encode_header([CID.of(RAW, b"")])[:-3]),
        ("duplicate key", b"\xa2\x67version\x01\x67version\x01"),
    ],
)
def test_bad_headers_are_codec_errors(label, header):
    with pytest.raises(CodecError):
        decode_header(header)


# -- writing ----------------------------------------------------------------------------
def test_export_is_depth_first_parent_first_without_duplicates():
    data = bytes(40) + bytes(range(10)) + bytes(40)  # repeated zero chunks
    root, store = _dag(data, ChunkParams(10, 3))
    raw = _car([root], store)
    reader = CarReader(io.BytesIO(raw))
    assert reader.roots == (root,)
    order = [cid for cid, _ in reader]
    assert len(order) == len(set(order)) == len(store)
    assert order[0] == root
    for i, cid in enumerate(order[1:], 1):  # each block follows a parent linking it
        assert any(cid in block_links(p, store[p]) for p in order[:i])
    expected = list(walk_dag([root], store.__getitem__))
    assert [c for c, _ in expected] == order


def test_walk_follows_dag_cbor_links():
    leaf = CID.of(RAW, b"payload")
    body = cbor2.dumps({"a": cbor2.CBORTag(42, b"\x00" + leaf.to_bytes()), "n": 1})
    parent = CID.of(DAG_CBOR, body)
    store = {parent: body, leaf: b"payload"}
    assert block_links(parent, body) == [leaf]
    assert [c for c, _ in walk_dag([parent], store.__getitem__)] == [parent, leaf]


def test_writer_counts_bytes():
    out = io.BytesIO()
    writer = CarWriter(out, [CID.of(RAW, b"x")])
    writer.write_block(CID.of(RAW, b"x"), b"x")
    assert writer.bytes_written == len(out.getvalue())
    assert writer.blocks == 1


@pytest.mark.parametrize("seed", [11, 12])
def test_independent_decoder_rebuilds_our_car(tmp_path, seed):
    data = random.Random(seed).randbytes(3 * KUBO_DEFAULT.chunk_size + 999)
    root, store = _dag(data, KUBO_DEFAULT)
    path = tmp_path / "file.car"
    path.write_bytes(_car([root], store))

    async def rebuild() -> bytes:
        async with FileByteStream(str(path)) as stream:
            return b"".join([chunk async for chunk in stream_bytes(str(root), stream)])

    assert run_in_fresh_loop(rebuild) == data


def test_independent_decoder_reads_a_deep_tiny_dag(tmp_path):
    data = bytes(range(256)) * 3
    root, store = _dag(data, ChunkParams(8, 2))
    path = tmp_path / "deep.car"
    path.write_bytes(_car([root], store))

    async def rebuild() -> bytes:
        async with FileByteStream(str(path)) as stream:
            return b"".join([chunk async for chunk in stream_bytes(str(root), stream)])

    assert run_in_fresh_loop(rebuild) == data


# -- reading ----------------------------------------------------------------------------
def test_round_trip_verifies_every_block():
    root, store = _dag(bytes(range(256)) * 20, ChunkParams(100, 4))
    blocks = dict(read_car(io.BytesIO(_car([root], store))))
    assert blocks == store


def test_corrupt_block_is_an_integrity_error():
    root, store = _dag(b"x" * 300, ChunkParams(100, 4))
    raw = bytearray(_car([root], store))
    raw[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not hash"):
        list(read_car(io.BytesIO(bytes(raw))))


@pytest.mark.parametrize(
    ("label", "tail"),
    [
        ("zero-length section", b"\x00"),
        ("oversized section", varint.encode(1 << 40)),
        ("CIDv0 section", b"\x23\x12\x20" + bytes(33)),
        ("truncated length", b"\x80"),
    ],
)
def test_malformed_sections_are_codec_errors(label, tail):
    raw = varint.encode(len(encode_header([]))) + encode_header([]) + tail
    with pytest.raises(CodecError):
        list(read_car(io.BytesIO(raw)))


def test_empty_stream_and_bad_header_length():
    with pytest.raises(CodecError, match="empty"):
        CarReader(io.BytesIO(b""))
    with pytest.raises(CodecError, match="out of range"):
        CarReader(io.BytesIO(b"\x00"))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_truncation_anywhere_is_an_error_or_a_clean_prefix(data):
    """Cut a CAR at any byte: the reader raises CodecError, unless the cut falls
    exactly between sections, in which case it yields a prefix of the blocks."""
    root, store = _dag(bytes(range(200)), ChunkParams(16, 3))
    raw = _car([root], store)
    full = list(read_car(io.BytesIO(raw)))
    boundaries, pos = set(), varint.decode(raw, 0)[1] + varint.decode(raw, 0)[0]
    boundaries.add(pos)
    while pos < len(raw):
        length, after = varint.decode(raw, pos)
        pos = after + length
        boundaries.add(pos)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        got = list(read_car(io.BytesIO(raw[:cut])))
    except CodecError:
        assert cut not in boundaries
        return
    assert cut in boundaries
    assert got == full[: len(got)]
