"""UnixFS files: kubo-identical CIDs, streaming build, range reads, strict parsing."""

import io
import random
import tracemalloc
from collections import deque

import aleph_cid
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.core.cid import CID, DAG_CBOR, DAG_PB, RAW
from chain.core.dagpb import PBLink, PBNode, decode_node, encode_node
from chain.core.errors import CodecError
from chain.core.unixfs import (
    KUBO_DEFAULT,
    PROFILE_2025,
    TYPE_DIRECTORY,
    TYPE_FILE,
    ChunkParams,
    FileBuilder,
    FileReader,
    FileStat,
    FSData,
    build_bytes,
    build_file,
    cat,
    decode_fsdata,
    encode_fsdata,
    parse_file_node,
    read_file,
    stat_file,
)

EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HELLO_NL = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
HELLO = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


class KuboLayout:
    """boxo's balanced.Layout / fillNodeRec, transcribed recursively as written
    upstream: an independent statement of the layout the streaming builder
    must reproduce."""

    def __init__(self, data: bytes, params: ChunkParams) -> None:
        size = params.chunk_size
        self.chunks = deque(data[i : i + size] for i in range(0, len(data), size))
        self.width = params.max_links
        self.blocks: dict[CID, bytes] = {}

    def done(self) -> bool:
        return not self.chunks

    def leaf(self, data: bytes | None = None) -> tuple[CID, int, int]:
        data = self.chunks.popleft() if data is None else data
        cid = CID.of(RAW, data)
        self.blocks[cid] = data
        return cid, len(data), len(data)

    def commit(self, children: list[tuple[CID, int, int]]) -> tuple[CID, int, int]:
        sizes = tuple(c[2] for c in children)
        fs = encode_fsdata(FSData(TYPE_FILE, None, sum(sizes), sizes))
        raw = encode_node(PBNode(tuple(PBLink(c[0], "", c[1]) for c in children), fs))
        cid = CID.of(DAG_PB, raw)
        self.blocks[cid] = raw
        return cid, len(raw) + sum(c[1] for c in children), sum(sizes)

    def fill(self, children: list, depth: int) -> tuple[CID, int, int]:
        while len(children) < self.width and not self.done():
            children.append(self.leaf() if depth == 1 else self.fill([], depth - 1))
        return self.commit(children)

    def layout(self) -> CID:
        if self.done():
            return self.leaf(b"")[0]
        root = self.leaf()
        depth = 1
        while not self.done():
            root = self.fill([root], depth)
            depth += 1
        return root[0]


def _build(data: bytes, params: ChunkParams):
    result, blocks = build_bytes(data, params)
    return result, dict(blocks), blocks


def _aleph(data: bytes) -> str:
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    return hasher.finalize()


# -- known vectors (kubo, 256 KiB / 174) ------------------------------------------------
@pytest.mark.parametrize(("data", "expected"), [(b"", EMPTY), (b"hello world\n", HELLO_NL), (b"hello world", HELLO)])
def test_kubo_vectors(data, expected):
    result, _, blocks = _build(data, KUBO_DEFAULT)
    assert str(result.root) == expected
    assert (result.size, result.blocks, result.depth) == (len(data), 1, 0)
    assert blocks == [(result.root, data)]


def test_empty_stream_is_the_empty_raw_leaf():
    blocks = []
    result = build_file(io.BytesIO(b""), lambda c, d: blocks.append((c, d)), PROFILE_2025)
    assert str(result.root) == EMPTY
    assert blocks == [(CID.decode(EMPTY), b"")]


def test_exactly_one_chunk_is_a_single_raw_leaf():
    data = random.Random(1).randbytes(KUBO_DEFAULT.chunk_size)
    result, _store, _ = _build(data, KUBO_DEFAULT)
    assert result.root == CID.of(RAW, data)
    assert (result.blocks, result.depth) == (1, 0)
    assert str(result.root) == _aleph(data)


def test_one_chunk_plus_one_byte_is_a_node_over_two_leaves():
    data = random.Random(2).randbytes(KUBO_DEFAULT.chunk_size + 1)
    result, store, blocks = _build(data, KUBO_DEFAULT)
    assert str(result.root) == _aleph(data)
    assert (result.blocks, result.depth) == (3, 1)
    assert blocks[-1][0] == result.root  # parent after children
    node = decode_node(store[result.root])
    fs = decode_fsdata(node.data)
    assert fs == FSData(TYPE_FILE, None, len(data), (KUBO_DEFAULT.chunk_size, 1))
    assert [link.tsize for link in node.links] == [KUBO_DEFAULT.chunk_size, 1]
    assert [link.name for link in node.links] == ["", ""]


@pytest.mark.parametrize(
    ("size", "seed"),
    [
        (3 * 262144 + 17, 3),
        (5_000_000, 4),
        (8 * 2**20, 5),
        (174 * 262144, 6),  # a full single level
        (174 * 262144 + 3 * 262144 + 5, 7),  # two levels
    ],
)
def test_matches_aleph_cid_on_multi_chunk_files(size, seed):
    data = random.Random(seed).randbytes(size)
    result, _, _ = _build(data, KUBO_DEFAULT)
    assert str(result.root) == _aleph(data)


# -- the layout ---------------------------------------------------------------------------
def test_deep_tree_matches_kubo_layout_and_is_balanced():
    params = ChunkParams(chunk_size=3, max_links=2)
    data = bytes(range(256))[: 3 * 2**4 + 1]  # 17 leaves: depth 5
    result, store, _ = _build(data, params)
    kubo = KuboLayout(data, params)
    assert result.root == kubo.layout()
    assert store == kubo.blocks
    assert result.depth == 5

    def leaf_depths(cid, depth):
        if cid.codec == RAW:
            return {depth}
        node = decode_node(store[cid])
        assert 1 <= len(node.links) <= params.max_links
        return set().union(*(leaf_depths(link.cid, depth + 1) for link in node.links))

    assert leaf_depths(result.root, 0) == {5}
    assert stat_file(store.__getitem__, result.root) == FileStat(len(data), result.blocks, 5, 3, 2)


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=400),
    chunk=st.integers(1, 9),
    width=st.integers(2, 5),
)
def test_streaming_builder_equals_kubo_recursive_layout(data, chunk, width):
    params = ChunkParams(chunk, width)
    result, store, blocks = _build(data, params)
    kubo = KuboLayout(data, params)
    assert result.root == kubo.layout()
    assert store == kubo.blocks
    assert result.blocks == len(blocks)
    seen = set()
    for cid, block in blocks:  # children are always emitted before parents
        if cid.codec == DAG_PB:
            assert all(link.cid in seen for link in decode_node(block).links)
        seen.add(cid)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), pieces=st.lists(st.integers(0, 40), max_size=20))
def test_write_in_arbitrary_pieces_equals_stream_build(data, pieces):
    params = ChunkParams(7, 3)
    expected = build_file(io.BytesIO(data), lambda c, d: None, params)
    builder = FileBuilder(lambda c, d: None, params)
    pos = 0
    for piece in pieces:
        builder.write(data[pos : pos + piece])
        pos += piece
    builder.write(data[pos:])
    assert builder.finish() == expected


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=500),
    chunk=st.integers(1, 16),
    width=st.integers(2, 4),
    offset=st.integers(0, 520),
    length=st.one_of(st.none(), st.integers(0, 520)),
)
def test_add_then_cat_any_range(data, chunk, width, offset, length):
    result, store, _ = _build(data, ChunkParams(chunk, width))
    got = b"".join(read_file(store.__getitem__, result.root, offset, length))
    end = len(data) if length is None else offset + length
    assert got == data[offset:end]


def test_build_streams_in_bounded_memory():
    """64 MiB through the builder never holds more than a few chunks."""

    class Zeros:
        def __init__(self, size):
            self.left = size

        def read(self, n):
            n = min(n, self.left)
            self.left -= n
            return bytes(n)

    params = ChunkParams(256 * 1024, 4)
    tracemalloc.start()
    try:
        result = build_file(Zeros(64 * 2**20), lambda c, d: None, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 64 * 2**20
    assert result.depth == 4
    assert peak < 3 * params.chunk_size


def test_short_chunk_must_be_last_and_builder_closes():
    builder = FileBuilder(lambda c, d: None, ChunkParams(4, 2))
    builder.add_chunk(b"ab")
    with pytest.raises(ValueError, match="last"):
        builder.add_chunk(b"cdef")
    builder.finish()
    with pytest.raises(ValueError, match="finished"):
        builder.write(b"x")


@pytest.mark.parametrize(("chunk", "width"), [(0, 2), (2**21 + 1, 2), (4, 1), (4, 10_000)])
def test_chunk_params_are_validated(chunk, width):
    with pytest.raises(ValueError):
        ChunkParams(chunk, width)


# -- reading ------------------------------------------------------------------------------
def test_range_read_touches_only_the_blocks_on_its_path():
    params = ChunkParams(10, 3)
    data = bytes(range(256)) * 4  # 1024 bytes, 103 leaves, depth 5
    result, store, _ = _build(data, params)
    fetched = []

    def get(cid):
        fetched.append(cid)
        return store[cid]

    reader = FileReader(get, cache_nodes=0)
    assert b"".join(reader.read(result.root, 501, 5)) == data[501:506]
    assert len(fetched) == result.depth + 1  # one path from the root to one leaf
    fetched.clear()
    assert b"".join(reader.read(result.root, 505, 10)) == data[505:515]
    assert sum(1 for c in fetched if c.codec == RAW) == 2
    assert len(fetched) <= 2 * (result.depth + 1)  # at most two paths


def test_reader_cache_serves_interior_nodes_again():
    result, store, _ = _build(bytes(5000), ChunkParams(100, 4))
    fetched = []
    reader = FileReader(lambda cid: fetched.append(cid) or store[cid])
    b"".join(reader.read(result.root, 0, 10))
    first = len(fetched)
    b"".join(reader.read(result.root, 0, 10))
    assert len(fetched) - first == 1  # only the leaf again


def test_stat_infers_parameters_when_the_dag_shows_them():
    result, store, _ = _build(bytes(range(200)) * 50, ChunkParams(64, 3))
    st_ = stat_file(store.__getitem__, result.root)
    assert (st_.size, st_.blocks, st_.depth) == (10_000, result.blocks, result.depth)
    assert (st_.chunk_size, st_.max_links) == (64, 3)
    single, store1, _ = _build(b"tiny", ChunkParams(64, 3))
    assert stat_file(store1.__getitem__, single.root).chunk_size is None


def test_reader_rejects_a_child_whose_size_disagrees_with_blocksizes():
    leaf_a, leaf_b = CID.of(RAW, b"abc"), CID.of(RAW, b"de")
    fs = encode_fsdata(FSData(TYPE_FILE, None, 6, (3, 3)))  # claims 3, leaf holds 2
    raw = encode_node(PBNode((PBLink(leaf_a, "", 3), PBLink(leaf_b, "", 2)), fs))
    root = CID.of(DAG_PB, raw)
    store = {root: raw, leaf_a: b"abc", leaf_b: b"de"}
    with pytest.raises(CodecError, match="parent says 3"):
        cat(store.__getitem__, root)


@pytest.mark.parametrize(
    ("label", "fs", "nlinks"),
    [
        ("links vs blocksizes", FSData(TYPE_FILE, None, 3, (3,)), 2),
        ("filesize", FSData(TYPE_FILE, None, 9, (3,)), 1),
        ("directory", FSData(TYPE_DIRECTORY), 0),
    ],
)
def test_inconsistent_or_foreign_nodes_are_rejected(label, fs, nlinks):
    links = tuple(PBLink(CID.of(RAW, b"abc"), "", 3) for _ in range(nlinks))
    raw = encode_node(PBNode(links, encode_fsdata(fs)))
    with pytest.raises(CodecError):
        parse_file_node(CID.of(DAG_PB, raw), raw)


def test_non_file_blocks_are_rejected():
    with pytest.raises(CodecError, match="not a UnixFS"):
        parse_file_node(CID.of(DAG_CBOR, b"\xa0"), b"\xa0")
    raw = encode_node(PBNode((), None))
    with pytest.raises(CodecError, match="without UnixFS"):
        parse_file_node(CID.of(DAG_PB, raw), raw)


def test_dag_pb_leaves_with_inline_data_are_readable():
    """Non-raw-leaf DAGs (older imports) keep bytes in the nodes' Data field."""
    leaf = encode_node(PBNode((), encode_fsdata(FSData(TYPE_FILE, b"world", 5))))
    leaf_cid = CID.of(DAG_PB, leaf)
    fs = encode_fsdata(FSData(TYPE_FILE, b"hello ", 11, (5,)))
    root_raw = encode_node(PBNode((PBLink(leaf_cid, "", len(leaf)),), fs))
    root = CID.of(DAG_PB, root_raw)
    store = {root: root_raw, leaf_cid: leaf}
    assert cat(store.__getitem__, root) == b"hello world"
    assert b"".join(read_file(store.__getitem__, root, 4, 4)) == b"o wo"


# -- the UnixFS Data protobuf -----------------------------------------------------------------
@given(
    st.builds(
        FSData,
        st.sampled_from([0, 2]),
        st.one_of(st.none(), st.binary(max_size=20)),
        st.one_of(st.none(), st.integers(0, 2**63 - 1)),
        st.lists(st.integers(0, 2**63 - 1), max_size=6).map(tuple),
    )
)
def test_fsdata_round_trip(fs):
    assert decode_fsdata(encode_fsdata(fs)) == fs


@pytest.mark.parametrize(
    ("label", "raw"),
    [
        ("missing type", b"\x18\x01"),
        ("unknown type", b"\x08\x09"),
        ("duplicate type", b"\x08\x02\x08\x02"),
        ("out of order", b"\x08\x02\x18\x01\x12\x00"),
        ("blocksizes then filesize", b"\x08\x02\x20\x01\x18\x01"),
        ("packed blocksizes", b"\x08\x02\x22\x01\x01"),
        ("type as bytes", b"\x0a\x01\x02"),
        ("truncated data", b"\x08\x02\x12\x05ab"),
        ("hashType (directory field)", b"\x08\x02\x28\x01"),
        ("mtime", b"\x08\x02\x42\x00"),
    ],
)
def test_fsdata_decoder_rejects(label, raw):
    with pytest.raises(CodecError):
        decode_fsdata(raw)
