"""Unsigned LEB128 varints as used by multiformats (CID, multihash, CAR).

Multiformats cap varints at 9 bytes (63 bits) and require the minimal
encoding; a non-minimal encoding would give one value two byte strings and so
two identifiers, which is exactly what content addressing must rule out.
"""

from typing import IO

from .errors import CodecError

MAX_VARINT_BYTES = 9


def encode(value: int) -> bytes:
    """Return the minimal unsigned varint encoding of ``value``."""
    if value < 0:
        raise CodecError(f"varint cannot encode a negative number ({value})")
    if value >= 1 << 63:
        raise CodecError("varint value exceeds 63 bits")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset``; return ``(value, offset_after)``.

    Rejects truncated input, encodings longer than 9 bytes and non-minimal
    encodings (a trailing zero continuation byte).
    """
    value = 0
    shift = 0
    pos = offset
    end = len(data)
    for index in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise CodecError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and index > 0:
                raise CodecError("non-minimal varint encoding")
            return value, pos
        shift += 7
    raise CodecError("varint longer than 9 bytes")


def read_stream(stream: IO[bytes]) -> int | None:
    """Read one varint from a binary stream; ``None`` at a clean end of stream."""
    value = 0
    shift = 0
    for index in range(MAX_VARINT_BYTES):
        chunk = stream.read(1)
        if not chunk:
            if index == 0:
                return None
            raise CodecError("truncated varint")
        byte = chunk[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and index > 0:
                raise CodecError("non-minimal varint encoding")
            return value
        shift += 7
    raise CodecError("varint longer than 9 bytes")
