"""CARv1: a stream of a DAG's blocks, written and read without holding it in memory.

Layout: ``varint(len(header)) header`` then, per block,
``varint(len(cid) + len(data)) cid data``. The header is the DAG-CBOR map
``{"roots": [CID, ...], "version": 1}``.

Correctness argument.

* The header is hand-encoded: a two-entry map whose keys are in DAG-CBOR order
  (length first, so "roots" before "version"), roots as tag 42 over
  ``0x00 || binary CID``, minimal lengths. It is the canonical encoding, so it
  equals what go-car and js @ipld/car write for the same roots.
* The writer walks the DAG depth first, parent before children, left to right,
  and never writes a block twice (a set of CIDs already written) — the order of
  ``ipfs dag export``, so a reader can stream a file from the front.
* The reader trusts nothing: every section is bounded (header and block size
  caps, so a forged length cannot make it allocate gigabytes), its CID must
  parse as one the node accepts, the block must hash to it
  (:class:`IntegrityError`), and truncation anywhere is a :class:`CodecError`.
  It yields a block only after checking it, so a consumer that stores what it
  receives never stores an unverified block; a consumer that must store all or
  nothing verifies the whole stream first (see ``blockstore.import_car``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import cbor2

from . import streamio, varint
from .cid import BINARY_SIZE as CID_BINARY_SIZE
from .cid import CID, DAG_CBOR, DAG_PB, RAW
from .dagpb import decode_node
from .errors import CodecError, IntegrityError
from .streamio import read_full

MAX_HEADER_SIZE = 1024 * 1024
MAX_SECTION_SIZE = 4 * 1024 * 1024
"""Largest accepted block (plus its CID); twice bitswap's 2 MiB block limit."""

Getter = Callable[[CID], bytes]


@dataclass(frozen=True, slots=True)
class CarHeader:
    roots: tuple[CID, ...]
    version: int = 1


# -- links ------------------------------------------------------------------------
def block_links(cid: CID, data: bytes) -> list[CID]:
    """The CIDs ``data`` links to, in order (duplicates kept)."""
    if cid.codec == RAW:
        return []
    if cid.codec == DAG_PB:
        return [link.cid for link in decode_node(data).links]
    if cid.codec == DAG_CBOR:
        return _cbor_links(data)
    raise CodecError(f"cannot read links of codec 0x{cid.codec:x}")  # pragma: no cover


def _cbor_links(data: bytes) -> list[CID]:
    """Every tag-42 CID in a DAG-CBOR block, in document order.

    Deliberately lenient about canonical form: this only finds what a block
    references (for export and garbage collection); the chain's own decoder
    enforces canonical DAG-CBOR where it matters.
    """
    found: list[CID] = []

    def on_cid(value: Any, immutable: bool) -> CID:
        cid = _tag42_cid(value)
        found.append(cid)
        return cid

    try:
        cbor2.loads(data, semantic_decoders={42: on_cid}, allow_indefinite=False)
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"invalid DAG-CBOR block: {exc}") from None
    return found


def _tag42_cid(value: Any) -> CID:
    if not isinstance(value, bytes) or not value or value[0] != 0:
        raise CodecError("tag 42 must wrap a byte string starting with 0x00")
    return CID.from_bytes(value[1:])


def walk_dag(roots: Iterable[CID], get: Getter) -> Iterator[tuple[CID, bytes]]:
    """Yield each block reachable from ``roots`` once: depth first, parent first.

    Memory is the set of CIDs seen plus a stack of pending siblings per level.
    """
    seen: set[CID] = set()
    stack: list[CID] = list(reversed(list(roots)))
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        data = get(cid)
        yield cid, data
        stack.extend(reversed(block_links(cid, data)))


# -- header -------------------------------------------------------------------------
def encode_header(roots: Sequence[CID]) -> bytes:
    """The canonical DAG-CBOR header ``{"roots": [...], "version": 1}``."""
    parts = [b"\xa2", b"\x65roots", _cbor_head(4, len(roots))]
    for root in roots:
        payload = b"\x00" + root.to_bytes()
        parts += (b"\xd8\x2a", _cbor_head(2, len(payload)), payload)
    parts.append(b"\x67version\x01")
    return b"".join(parts)


def _cbor_head(major: int, length: int) -> bytes:
    """A CBOR item head with the shortest length encoding."""
    if length < 24:
        return bytes([major << 5 | length])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * width):
            return bytes([major << 5 | info]) + length.to_bytes(width, "big")
    raise CodecError("CBOR length too large")  # pragma: no cover


def decode_header(raw: bytes) -> CarHeader:
    """Parse a CARv1 header: a map with ``version`` 1 and ``roots`` a list of CIDs."""
    stream = io.BytesIO(raw)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders={42: lambda value, immutable: _tag42_cid(value)},
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        header = decoder.decode()
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"CAR header is not valid CBOR: {exc}") from None
    if stream.tell() != len(raw):
        raise CodecError("CAR header has trailing bytes")
    if not isinstance(header, dict):
        raise CodecError("CAR header must be a map")
    version = header.get("version")
    if version == 2:
        raise CodecError("CARv2 is not supported; export as CARv1")
    if type(version) is not int or version != 1:
        raise CodecError(f"unsupported CAR version {version!r}")
    extra = set(header) - {"roots", "version"}
    if extra:
        raise CodecError(f"CAR header has unexpected keys {sorted(map(str, extra))}")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise CodecError("CAR header roots must be a list of CIDs")
    return CarHeader(tuple(roots), 1)


# -- writing --------------------------------------------------------------------------
class CarWriter:
    """Writes a CARv1 stream section by section; counts what it wrote."""

    def __init__(self, out: BinaryIO, roots: Sequence[CID]) -> None:
        self._out = out
        header = encode_header(roots)
        out.write(varint.encode(len(header)))
        out.write(header)
        self.blocks = 0
        self.bytes_written = len(varint.encode(len(header))) + len(header)

    def write_block(self, cid: CID, data: bytes) -> None:
        cid_bytes = cid.to_bytes()
        prefix = varint.encode(len(cid_bytes) + len(data)) + cid_bytes
        self._out.write(prefix)
        self._out.write(data)
        self.blocks += 1
        self.bytes_written += len(prefix) + len(data)


@dataclass(frozen=True, slots=True)
class CarStats:
    roots: tuple[CID, ...]
    blocks: int
    bytes_written: int


def write_car(out: BinaryIO, roots: Sequence[CID], get: Getter, *, read_ahead: int = 0) -> CarStats:
    """Export the DAGs under ``roots`` (each block once, parent first) to ``out``.

    ``read_ahead``: how many blocks a thread of their own may get (and check)
    ahead of the writer, so that reading a store and sending overlap.
    """
    writer = CarWriter(out, roots)
    blocks = walk_dag(roots, get)
    for cid, data in streamio.read_ahead(blocks, read_ahead) if read_ahead else blocks:
        writer.write_block(cid, data)
    return CarStats(tuple(roots), writer.blocks, writer.bytes_written)


# -- reading ----------------------------------------------------------------------------
class CarReader:
    """Reads a CARv1 stream: ``header`` on construction, then verified blocks.

    Iterating yields ``(cid, data)`` for each section after checking that the
    data hashes to the CID. Errors: :class:`CodecError` for anything malformed
    or truncated, :class:`IntegrityError` for a block that does not match.
    """

    def __init__(self, stream: BinaryIO, *, max_section: int = MAX_SECTION_SIZE) -> None:
        self._stream = stream
        self._max_section = max_section
        length = varint.read_stream(stream)
        if length is None:
            raise CodecError("empty CAR stream (no header)")
        if not 0 < length <= MAX_HEADER_SIZE:
            raise CodecError(f"CAR header length {length} out of range")
        self.header = decode_header(_read_exact(stream, length, "header"))
        self._consumed = len(varint.encode(length)) + length

    @property
    def roots(self) -> tuple[CID, ...]:
        return self.header.roots

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        for cid, data, _offset in self.with_offsets():
            yield cid, data

    def with_offsets(self) -> Iterator[tuple[CID, bytes, int]]:
        """Like iterating, with where each block's bytes start, counted from the stream's start."""
        index = 0
        while True:
            length = varint.read_stream(self._stream)
            if length is None:
                return
            if not 0 < length <= self._max_section:
                raise CodecError(f"CAR section {index}: length {length} out of range")
            # The CID first, then the block into a bytes object of its own: slicing it off the
            # section would copy every block once more.
            head = _read_exact(self._stream, min(length, CID_BINARY_SIZE), f"section {index}")
            cid, pos = CID.read(head, 0)
            data = _read_exact(self._stream, length - len(head), f"section {index}")
            if pos < len(head):
                data = head[pos:] + data
            if not cid.verify(data):
                raise IntegrityError(f"CAR section {index}: block does not hash to {cid}")
            yield cid, data, self._consumed + len(varint.encode(length)) + pos
            self._consumed += len(varint.encode(length)) + length
            index += 1


def read_car(stream: BinaryIO) -> Iterator[tuple[CID, bytes]]:
    """The verified blocks of a CARv1 stream (header checked, roots ignored)."""
    return iter(CarReader(stream))


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    try:
        data = read_full(stream, size)
    except ValueError as exc:
        raise CodecError(str(exc)) from None
    if len(data) != size:
        raise CodecError(f"truncated CAR {what}: {len(data)} of {size} bytes")
    return data
