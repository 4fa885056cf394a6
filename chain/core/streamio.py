"""Reading from binary streams that may return short reads (pipes, sockets)."""

from __future__ import annotations

from typing import BinaryIO


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer only at the end of the stream.

    A plain ``read(n)`` may legally return fewer bytes mid-stream; the
    chunkers, the CAR reader and the stream cipher all need whole units.
    """
    data = stream.read(size)
    if data is None:
        raise ValueError("non-blocking stream returned no data")
    if len(data) == size or not data:
        return data
    parts = [data]
    missing = size - len(data)
    while missing:
        more = stream.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)
