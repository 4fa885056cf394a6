"""UnixFS v1 files: build a balanced DAG from a byte stream, read it back.

Building reproduces ``ipfs add --cid-version=1 --raw-leaves`` (kubo/boxo
balanced layout, fixed-size chunker) for any chunk size and width:

* the stream is cut into ``chunk_size`` pieces; each is a raw-codec leaf;
  a stream of at most one chunk is that single leaf (the empty stream is the
  leaf ``b""``);
* otherwise leaves are grouped, in order, into dag-pb File nodes of at most
  ``max_links`` children, those nodes into nodes again, level by level, until
  one node remains. Every leaf is at the same depth.

Correctness argument for the streaming form. boxo's ``balanced.Layout`` grows
the root one level at a time and fills each new level's subtree left to right
with full subtrees of the level below, except the last, which recursion makes
a (possibly single-child) chain down to the leaves. That is exactly what
grouping each level into consecutive runs of ``max_links`` produces, because
the runs start at the left edge of every level. A run is therefore final as
soon as it holds ``max_links`` entries, so the builder emits that parent at
once and keeps at most ``max_links - 1`` pending entries per level: memory is
O(chunk_size + max_links × depth), never O(file). At the end each level's
partial run becomes a node and moves up until a level holds a single entry
with nothing above it: the root. Parents are emitted after their children.

A node's link to a child carries ``Name ""`` and ``Tsize`` (the child's block
size plus its own links' Tsize, i.e. the bytes of the whole subtree); its
UnixFS Data holds ``Type=File``, ``filesize`` and one ``blocksizes`` entry per
child (the file bytes under that child). These are the fields boxo writes,
in the same order, so the bytes and therefore the CIDs are identical.

Reading re-hashes nothing itself: the ``get`` function it is given (the block
store's) verifies each block. The reader checks the structure it relies on
(blocksizes match the links and the children's real sizes, filesize adds up)
and uses blocksizes to skip whole subtrees, so a range read touches only the
blocks on the paths to the bytes asked for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from . import varint
from .cid import CID, DAG_PB, RAW
from .dagpb import PBLink, PBNode, decode_node, encode_node
from .errors import CodecError
from .streamio import read_full

# UnixFS Data.DataType values.
TYPE_RAW = 0
TYPE_DIRECTORY = 1
TYPE_FILE = 2
TYPE_METADATA = 3
TYPE_SYMLINK = 4
TYPE_HAMT_SHARD = 5
_TYPE_NAMES = {0: "raw", 1: "directory", 2: "file", 3: "metadata", 4: "symlink", 5: "HAMT shard"}

MAX_CHUNK_SIZE = 2 * 1024 * 1024
"""Bitswap's block size limit: a larger chunk could not be replicated."""
MAX_LINKS_LIMIT = 8192
MAX_DEPTH = 64
"""Deeper trees are refused on read (a balanced file of 2 MiB chunks × 2 links
at depth 64 would be 2**85 bytes)."""

Block = tuple[CID, bytes]
Sink = Callable[[CID, bytes], None]
Getter = Callable[[CID], bytes]


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """Chunker size and DAG width; recorded with every object built from them."""

    chunk_size: int
    max_links: int

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, not {self.chunk_size}")
        if not 2 <= self.max_links <= MAX_LINKS_LIMIT:
            raise ValueError(f"max_links must be in 2..{MAX_LINKS_LIMIT}, not {self.max_links}")


PROFILE_2025 = ChunkParams(chunk_size=1024 * 1024, max_links=1024)
"""IPIP-0499 ``unixfs-v1-2025``: the project default."""
KUBO_DEFAULT = ChunkParams(chunk_size=256 * 1024, max_links=174)
"""``ipfs add --cid-version=1 --raw-leaves`` with kubo's default chunker."""


# -- the UnixFS Data protobuf -------------------------------------------------
@dataclass(frozen=True, slots=True)
class FSData:
    """UnixFS ``Data`` for files: Type (1), Data (2), filesize (3), blocksizes (4)."""

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


def encode_fsdata(fs: FSData) -> bytes:
    """Encode in field order with minimal varints, blocksizes unpacked (as boxo does)."""
    parts = [b"\x08", varint.encode(fs.type)]
    if fs.data is not None:
        parts += (b"\x12", varint.encode(len(fs.data)), fs.data)
    if fs.filesize is not None:
        parts += (b"\x18", varint.encode(fs.filesize))
    for size in fs.blocksizes:
        parts += (b"\x20", varint.encode(size))
    return b"".join(parts)


def decode_fsdata(raw: bytes) -> FSData:
    """Decode UnixFS Data strictly: file fields only, ascending, no duplicates.

    Fields 1-4 are the only ones accepted; ``blocksizes`` must be unpacked
    varints and contiguous. Directory fields (hashType, fanout) and the
    optional mode/mtime are refused: this store neither writes nor needs them.
    """
    pos, end = 0, len(raw)
    type_: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    sizes: list[int] = []
    last = 0
    while pos < end:
        key, pos = varint.decode(raw, pos)
        field, wire = key >> 3, key & 7
        if field < last or (field == last and field != 4):
            kind = "duplicate" if field == last else "out-of-order"
            raise CodecError(f"UnixFS Data: {kind} field {field}")
        last = field
        if field in (1, 3, 4):
            if wire != 0:
                raise CodecError(f"UnixFS Data: field {field} has wire type {wire}, expected 0")
            value, pos = varint.decode(raw, pos)
            if field == 1:
                type_ = value
            elif field == 3:
                filesize = value
            else:
                sizes.append(value)
        elif field == 2:
            if wire != 2:
                raise CodecError(f"UnixFS Data: Data has wire type {wire}, expected 2")
            length, pos = varint.decode(raw, pos)
            if pos + length > end:
                raise CodecError("UnixFS Data: Data runs past the end (truncated)")
            data, pos = raw[pos : pos + length], pos + length
        else:
            raise CodecError(f"UnixFS Data: unsupported field {field}")
    if type_ is None:
        raise CodecError("UnixFS Data: missing Type")
    if type_ not in _TYPE_NAMES:
        raise CodecError(f"UnixFS Data: unknown Type {type_}")
    return FSData(type_, data, filesize, tuple(sizes))


# -- building -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BuildResult:
    """What a build produced. ``blocks`` counts blocks emitted (a repeated chunk
    counts each time); ``depth`` is the number of dag-pb levels above the leaves
    (0 when the file is a single raw leaf)."""

    root: CID
    size: int
    blocks: int
    depth: int
    params: ChunkParams


@dataclass(frozen=True, slots=True)
class _Entry:
    cid: CID
    tsize: int  # bytes of the whole subtree's blocks (the link's Tsize)
    filesize: int  # file bytes under it (the parent's blocksizes entry)


class FileBuilder:
    """Push-style balanced-layout builder; blocks go to ``sink(cid, data)`` in order.

    Feed whole chunks with :meth:`add_chunk` (the last may be short) or any
    pieces with :meth:`write`, then call :meth:`finish` once. Every block is
    handed to the sink as an immutable ``bytes`` whose CID was computed from
    that very object, and children always precede their parents.
    """

    def __init__(self, sink: Sink, params: ChunkParams = PROFILE_2025) -> None:
        self._sink = sink
        self.params = params
        self._levels: list[list[_Entry]] = [[]]
        self._size = 0
        self._blocks = 0
        self._pending = bytearray()
        self._short_seen = False
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes; full chunks are emitted as soon as they are complete."""
        self._check_open()
        chunk_size = self.params.chunk_size
        view = memoryview(data)
        if self._pending:
            take = min(len(view), chunk_size - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < chunk_size:
                return
            self.add_chunk(bytes(self._pending))
            self._pending.clear()
        while len(view) >= chunk_size:
            self.add_chunk(bytes(view[:chunk_size]))
            view = view[chunk_size:]
        self._pending += view

    def add_chunk(self, chunk: bytes) -> None:
        """Emit one leaf. Only the final chunk may be shorter than ``chunk_size``."""
        self._check_open()
        if self._short_seen:
            raise ValueError("a short chunk must be the last one")
        if len(chunk) > self.params.chunk_size:
            raise ValueError(f"chunk of {len(chunk)} bytes exceeds chunk_size")
        if len(chunk) < self.params.chunk_size:
            self._short_seen = True
        chunk = bytes(chunk)  # no copy for bytes; an immutable snapshot otherwise
        cid = CID.of(RAW, chunk)
        self._sink(cid, chunk)
        self._blocks += 1
        self._size += len(chunk)
        self._push(0, _Entry(cid, len(chunk), len(chunk)))

    def finish(self) -> BuildResult:
        """Flush partial runs upward and return the root; the builder is then closed."""
        self._check_open()
        if self._pending:
            self.add_chunk(bytes(self._pending))
            self._pending.clear()
        if self._blocks == 0:
            self.add_chunk(b"")  # the empty file is the raw leaf of b"" (as kubo)
        self._finished = True
        levels = self._levels
        level = 0
        while True:
            entries = levels[level]
            above = any(levels[level + 1 :])
            if entries and not above and len(entries) == 1:
                root = entries[0]
                return BuildResult(root.cid, self._size, self._blocks, level, self.params)
            if entries:
                self._push(level + 1, self._emit_node(entries))
                levels[level] = []
            level += 1

    def _push(self, level: int, entry: _Entry) -> None:
        if level == len(self._levels):
            self._levels.append([])
        run = self._levels[level]
        run.append(entry)
        if len(run) == self.params.max_links:
            self._levels[level] = []
            self._push(level + 1, self._emit_node(run))

    def _emit_node(self, entries: list[_Entry]) -> _Entry:
        sizes = tuple(e.filesize for e in entries)
        filesize = sum(sizes)
        fsdata = encode_fsdata(FSData(TYPE_FILE, None, filesize, sizes))
        links = tuple(PBLink(e.cid, "", e.tsize) for e in entries)
        block = encode_node(PBNode(links, fsdata))
        cid = CID.of(DAG_PB, block)
        self._sink(cid, block)
        self._blocks += 1
        return _Entry(cid, len(block) + sum(e.tsize for e in entries), filesize)

    def _check_open(self) -> None:
        if self._finished:
            raise ValueError("builder already finished")


def read_chunk(stream: BinaryIO, size: int) -> bytes:
    """Read exactly ``size`` bytes, or fewer only at the end of the stream.

    ``read(n)`` returns a fresh ``bytes`` straight from the OS: one copy. A
    ``readinto`` into a reused buffer would still need a second copy, because
    leaves must end up as immutable ``bytes`` (hashed once, stored as is).
    """
    return read_full(stream, size)


def build_file(stream: BinaryIO, sink: Sink, params: ChunkParams = PROFILE_2025) -> BuildResult:
    """Chunk ``stream`` and emit its balanced DAG to ``sink``; return the root."""
    builder = FileBuilder(sink, params)
    size = params.chunk_size
    while True:
        chunk = read_chunk(stream, size)
        if chunk:
            builder.add_chunk(chunk)
        if len(chunk) < size:
            return builder.finish()


def build_bytes(data: bytes, params: ChunkParams = PROFILE_2025) -> tuple[BuildResult, list[Block]]:
    """Build in memory (tests, small objects): the result and the blocks in emit order."""
    blocks: list[Block] = []
    builder = FileBuilder(lambda cid, block: blocks.append((cid, block)), params)
    builder.write(data)
    return builder.finish(), blocks


# -- reading --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileNode:
    """One block of a UnixFS file: its inline bytes, then its children in order."""

    data: bytes
    links: tuple[PBLink, ...]
    blocksizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.data) + sum(self.blocksizes)


def parse_file_node(cid: CID, block: bytes) -> FileNode:
    """Interpret a (verified) block as part of a UnixFS file, checking its sizes."""
    if cid.codec == RAW:
        return FileNode(block, (), ())
    if cid.codec != DAG_PB:
        raise CodecError(f"{cid} is {cid.codec_name}, not a UnixFS file block")
    node = decode_node(block)
    if node.data is None:
        raise CodecError(f"{cid}: dag-pb node without UnixFS Data")
    fs = decode_fsdata(node.data)
    if fs.type not in (TYPE_FILE, TYPE_RAW):
        raise CodecError(f"{cid} is a UnixFS {_TYPE_NAMES[fs.type]}, not a file")
    if len(fs.blocksizes) != len(node.links):
        raise CodecError(f"{cid}: {len(node.links)} links but {len(fs.blocksizes)} blocksizes")
    result = FileNode(fs.data or b"", node.links, fs.blocksizes)
    if fs.filesize is not None and fs.filesize != result.size:
        raise CodecError(f"{cid}: filesize {fs.filesize} != data + blocksizes {result.size}")
    return result


@dataclass(frozen=True, slots=True)
class FileStat:
    """Size and shape of a stored file. ``chunk_size``/``max_links`` are inferred
    from the layout and are None when the DAG is too small to show them (a
    single leaf shows no chunk size; a one-level tree shows no width)."""

    size: int
    blocks: int
    depth: int
    chunk_size: int | None
    max_links: int | None


class FileReader:
    """Reads UnixFS files through ``get``, caching decoded interior nodes.

    The cache is keyed by CID, so it can never serve a node for the wrong
    identifier; it holds at most ``cache_nodes`` decoded dag-pb nodes (each at
    most ``max_links`` links), which keeps repeated range reads of one object
    from re-decoding its upper levels.
    """

    def __init__(self, get: Getter, cache_nodes: int = 64) -> None:
        self._get = get
        self._cache: OrderedDict[CID, FileNode] = OrderedDict()
        self._cache_nodes = cache_nodes
        self._lock = threading.Lock()  # one reader may serve many threads

    def node(self, cid: CID) -> FileNode:
        """The parsed block ``cid`` (interior nodes cached, raw leaves never)."""
        with self._lock:
            cached = self._cache.get(cid)
            if cached is not None:
                self._cache.move_to_end(cid)
                return cached
        parsed = parse_file_node(cid, self._get(cid))
        if cid.codec == DAG_PB and parsed.links and self._cache_nodes:
            with self._lock:
                self._cache[cid] = parsed
                if len(self._cache) > self._cache_nodes:
                    self._cache.popitem(last=False)
        return parsed

    def read(self, root: CID, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[offset, offset + length)`` of the file (to EOF if None)."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be non-negative")
        top = self.node(root)
        end = top.size if length is None else min(top.size, offset + length)
        if offset < end:
            yield from self._read(top, offset, end, 0)

    def _read(self, node: FileNode, start: int, end: int, depth: int) -> Iterator[bytes]:
        """Yield ``node``'s bytes in ``[start, end)`` (relative to the node, end <= size)."""
        if depth > MAX_DEPTH:
            raise CodecError(f"file DAG deeper than {MAX_DEPTH} levels")
        data = node.data
        if start < len(data):
            stop = min(end, len(data))
            yield data if start == 0 and stop == len(data) else data[start:stop]
        pos = len(data)
        for link, size in zip(node.links, node.blocksizes, strict=True):
            if pos >= end:
                return
            if pos + size > start:
                child = self.node(link.cid)
                if child.size != size:
                    raise CodecError(f"{link.cid}: holds {child.size} bytes, parent says {size}")
                yield from self._read(child, max(start - pos, 0), min(end - pos, size), depth + 1)
            pos += size

    def stat(self, root: CID) -> FileStat:
        """Size, block count, depth and inferred chunk parameters, fetching no raw leaf."""
        top = self.node(root)
        blocks, depth, leaf_sizes = self._walk(root, top, 0)
        first_child_width = None
        if depth >= 2 and len(top.links) >= 2:
            first_child_width = len(self.node(top.links[0].cid).links)
        chunk_size = leaf_sizes[0] if len(leaf_sizes) >= 2 else None
        return FileStat(top.size, blocks, depth, chunk_size, first_child_width)

    def _walk(self, cid: CID, node: FileNode, depth: int) -> tuple[int, int, list[int]]:
        """Count blocks under ``node``; return (blocks, depth, first two leaf sizes)."""
        if depth > MAX_DEPTH:
            raise CodecError(f"file DAG deeper than {MAX_DEPTH} levels")
        if not node.links:
            return 1, 0, [node.size]
        blocks, max_depth = 1, 0
        leaves: list[int] = []
        for link, size in zip(node.links, node.blocksizes, strict=True):
            if link.cid.codec == RAW:
                sub_blocks, sub_depth, sub_leaves = 1, 0, [size]
            else:
                sub_blocks, sub_depth, sub_leaves = self._walk(link.cid, self.node(link.cid), depth + 1)
            blocks += sub_blocks
            max_depth = max(max_depth, sub_depth + 1)
            if len(leaves) < 2:
                leaves.extend(sub_leaves[: 2 - len(leaves)])
        return blocks, max_depth, leaves


def read_file(get: Getter, root: CID, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Stream the bytes of a UnixFS file (see :meth:`FileReader.read`)."""
    return FileReader(get).read(root, offset, length)


def cat(get: Getter, root: CID) -> bytes:
    """The whole file in memory (tests and small objects only)."""
    return b"".join(read_file(get, root))


def stat_file(get: Getter, root: CID) -> FileStat:
    """See :meth:`FileReader.stat`."""
    return FileReader(get).stat(root)
