"""DAG-PB: the protobuf node format of UnixFS, encoded and decoded strictly.

The schema (IPLD DAG-PB spec)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2;
                     optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Correctness argument. A block's CID is the hash of its bytes, so the encoder
must produce the one canonical byte string for a node, and the decoder must
not let two byte strings mean the same node unnoticed. Hence:

* The encoder writes Links (field 2) before Data (field 1), and a link's
  fields in the order Hash, Name, Tsize, each only when present, with minimal
  varints: exactly what go-codec-dagpb and js-dag-pb write, so our CIDs equal
  theirs.
* The decoder rejects duplicate, unknown or out-of-order fields, wrong wire
  types, non-minimal varints, truncated input, a link without a Hash, a Hash
  that is not a CID this node accepts and a Name that is not UTF-8. The single
  tolerance is the legacy order Data-before-Links (older go-ipfs wrote it);
  such a node decodes, but it re-encodes to different bytes, so its CID is
  still the hash of the bytes actually received (the store never re-encodes).
  With that exception ``encode(decode(b)) == b`` for every ``b`` that decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import varint
from .cid import CID, CODEC_NAMES, DIGEST_SIZE
from .errors import CodecError

_WIRE_VARINT = 0
_WIRE_BYTES = 2

# Field keys are (field_number << 3) | wire_type: PBNode Data 0x0a, Links 0x12;
# PBLink Hash 0x0a, Name 0x12, Tsize 0x18.


@dataclass(frozen=True, slots=True)
class PBLink:
    """A link to a child block; ``name`` and ``tsize`` are optional (None = absent)."""

    cid: CID
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A DAG-PB node: ordered links and optional data (None = absent, b"" = empty)."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


# -- encoding ---------------------------------------------------------------
def _uvarint(value: int) -> bytes:
    """A minimal varint; one-byte values (most tags and lengths) skip the loop."""
    return _SMALL_VARINTS[value] if value < 0x80 else varint.encode(value)


_SMALL_VARINTS = [bytes([i]) for i in range(0x80)]


def encode_link(link: PBLink) -> bytes:
    """The canonical bytes of one PBLink (without the enclosing field tag)."""
    cid_bytes = link.cid.to_bytes()
    parts = [b"\x0a", _uvarint(len(cid_bytes)), cid_bytes]
    if link.name is not None:
        name = link.name.encode("utf-8")
        parts += (b"\x12", _uvarint(len(name)), name)
    if link.tsize is not None:
        parts += (b"\x18", _uvarint(link.tsize))
    return b"".join(parts)


def encode_node(node: PBNode) -> bytes:
    """The canonical bytes of ``node``: all links first, then data."""
    parts: list[bytes] = []
    for link in node.links:
        body = encode_link(link)
        parts += (b"\x12", _uvarint(len(body)), body)
    if node.data is not None:
        parts += (b"\x0a", _uvarint(len(node.data)), node.data)
    return b"".join(parts)


# -- decoding ---------------------------------------------------------------
# A varint below 0x80 is one byte and is always minimal, so the hot loops read
# it inline and fall back to varint.decode (which checks minimality, the 9-byte
# cap and truncation) for anything longer.
_CID_HEADERS = {CID.of(codec, b"").to_bytes()[:4]: codec for codec in CODEC_NAMES}
_CID_LEN = 4 + DIGEST_SIZE


def _parse_cid(raw: bytes) -> CID:
    """Parse a link's Hash; the common 36-byte CIDv1/sha2-256 takes a fast path."""
    if len(raw) == _CID_LEN:
        codec = _CID_HEADERS.get(raw[:4])
        if codec is not None:
            return CID(codec, raw[4:])
    return CID.from_bytes(raw)  # raises a CodecError naming the problem


def _read_bytes(buf: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """Read a length-delimited value at ``pos`` that must end by ``end``."""
    if pos < end and buf[pos] < 0x80:
        length = buf[pos]
        pos += 1
    else:
        length, pos = varint.decode(buf, pos)
    stop = pos + length
    if stop > end:
        raise CodecError(f"protobuf ({what}): length {length} runs past the end (truncated)")
    return buf[pos:stop], stop


def _read_key(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """Read a field key; return ``(field_number, wire_type, pos_after)``."""
    key = buf[pos]
    if key < 0x80:
        pos += 1
    else:
        key, pos = varint.decode(buf, pos)
    if key >> 3 == 0:
        raise CodecError(f"protobuf ({what}): field number 0 is invalid")
    return key >> 3, key & 7, pos


def decode_link(buf: bytes) -> PBLink:
    """Decode one PBLink body strictly (fields Hash, Name, Tsize in that order)."""
    fast = _decode_common_link(buf)
    return fast if fast is not None else _decode_link_general(buf)


def _decode_common_link(buf: bytes) -> PBLink | None:
    """The shape every UnixFS importer writes: a 36-byte CID, maybe Name "", maybe Tsize.

    Returns None for anything else, which the general decoder then handles; on
    the inputs it accepts it returns exactly what the general decoder would.
    """
    end = len(buf)
    if end < 38 or buf[0] != 0x0A or buf[1] != _CID_LEN:
        return None
    codec = _CID_HEADERS.get(buf[2:6])
    if codec is None:
        return None
    pos = 38
    name = None
    tsize = None
    if pos + 1 < end and buf[pos] == 0x12 and buf[pos + 1] == 0:
        name = ""
        pos += 2
    if pos < end and buf[pos] == 0x18:
        tsize, pos = varint.decode(buf, pos + 1)
    if pos != end:
        return None
    return PBLink(CID(codec, buf[6:38]), name, tsize)


def _decode_link_general(buf: bytes) -> PBLink:
    pos, end = 0, len(buf)
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    last_field = 0
    while pos < end:
        field, wire, pos = _read_key(buf, pos, "PBLink")
        if field <= last_field:
            kind = "duplicate" if field == last_field else "out-of-order"
            raise CodecError(f"protobuf (PBLink): {kind} field {field}")
        last_field = field
        if field == 1:
            if wire != _WIRE_BYTES:
                raise CodecError(f"protobuf (PBLink): Hash has wire type {wire}, expected 2")
            raw, pos = _read_bytes(buf, pos, end, "PBLink Hash")
            cid = _parse_cid(raw)
        elif field == 2:
            if wire != _WIRE_BYTES:
                raise CodecError(f"protobuf (PBLink): Name has wire type {wire}, expected 2")
            raw, pos = _read_bytes(buf, pos, end, "PBLink Name")
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CodecError("protobuf (PBLink): Name is not valid UTF-8") from None
        elif field == 3:
            if wire != _WIRE_VARINT:
                raise CodecError(f"protobuf (PBLink): Tsize has wire type {wire}, expected 0")
            tsize, pos = varint.decode(buf, pos)
        else:
            raise CodecError(f"protobuf (PBLink): unknown field {field}")
    if cid is None:
        raise CodecError("protobuf (PBLink): missing Hash")
    return PBLink(cid, name, tsize)


def decode_node(data: bytes | bytearray | memoryview) -> PBNode:
    """Decode a DAG-PB block strictly; see the module docstring for what is rejected.

    Links must be contiguous. Data may come after them (canonical) or, for
    legacy blocks, before them; it may appear once.
    """
    buf = bytes(data)
    pos, end = 0, len(buf)
    links: list[PBLink] = []
    node_data: bytes | None = None
    links_closed = False  # True once Data has followed a run of links
    while pos < end:
        if buf[pos] == 0x12 and not links_closed:  # the hot path: one more link
            body, pos = _read_bytes(buf, pos + 1, end, "PBNode Links")
            links.append(decode_link(body))
            continue
        field, wire, pos = _read_key(buf, pos, "PBNode")
        if wire != _WIRE_BYTES:
            raise CodecError(f"protobuf (PBNode): field {field} has wire type {wire}, expected 2")
        if field == 2:
            raise CodecError("protobuf (PBNode): Links after Data after Links (out of order)")
        if field != 1:
            raise CodecError(f"protobuf (PBNode): unknown field {field}")
        if node_data is not None:
            raise CodecError("protobuf (PBNode): duplicate Data field")
        node_data, pos = _read_bytes(buf, pos, end, "PBNode Data")
        links_closed = bool(links)
    return PBNode(tuple(links), node_data)


def is_canonical(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` decodes and is the canonical encoding of what it decodes to."""
    try:
        return encode_node(decode_node(data)) == bytes(data)
    except CodecError:
        return False
