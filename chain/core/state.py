"""The ledger's state: a key-value view, change lists and the state hash.

The core never owns storage. Transaction types read through a
:class:`StateView` (``get``) and *return* the changes they want; the ledger
writes them into an :class:`Overlay` so later transactions of the same block
see them, and hands the ordered list back to the caller, which commits it to
the real store (a dict here, database tables in the Django layer) only after
the whole block validated. A block is therefore applied entirely or not at
all, whatever the backing store.

Keys are strings; the ``chain/`` and ``seq/`` prefixes belong to the ledger,
other prefixes to the transaction types that register them. Values are
anything DAG-CBOR encodes; ``None`` means "delete".

State hash. ``state_hash(n) = sha256(state_hash(n-1) ‖ DAG-CBOR([[key,
value], …]))`` over the changes block ``n`` applied, in order, starting from
32 zero bytes before genesis. Two nodes that start from the same genesis and
agree on every block's state hash applied the same changes in the same order,
so their states are equal; a node that computed anything else (a different
validator version, a bug, a tampered store) diverges at the first block where
it happened, and the hash chain says which one. Hashing the changes rather
than the whole state keeps the cost proportional to the block, not the
database.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import dagcbor

INITIAL_STATE_HASH = bytes(32)
SEQ_PREFIX = "seq/"


class StateView(Protocol):
    """Read access to the state. Returned values must be treated as read-only."""

    def get(self, key: str) -> Any: ...


class State(StateView, Protocol):
    """Read-write state; ``set(key, None)`` deletes the key."""

    def set(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class StateChange:
    """Set ``key`` to ``value`` (``None``: delete it)."""

    key: str
    value: Any

    def to_cbor(self) -> list[Any]:
        return [self.key, self.value]


class DictState:
    """An in-memory :class:`State`, for tests, tools and the pure core."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value


class Overlay:
    """Uncommitted writes over a base view; records every change in order."""

    def __init__(self, base: StateView) -> None:
        self._base = base
        self._pending: dict[str, Any] = {}
        self.changes: list[StateChange] = []

    def get(self, key: str) -> Any:
        if key in self._pending:
            return self._pending[key]
        return self._base.get(key)

    def set(self, key: str, value: Any) -> None:
        self._pending[key] = value
        self.changes.append(StateChange(key, value))


def commit(state: State, changes: Iterable[StateChange]) -> None:
    """Write ``changes`` into ``state`` in order."""
    for change in changes:
        state.set(change.key, change.value)


def seq_key(signer: bytes) -> str:
    """The state key holding a signer's last used sequence number."""
    return SEQ_PREFIX + signer.hex()


def last_seq(view: StateView, signer: bytes) -> int:
    """The signer's last committed sequence number (0: none yet)."""
    value = view.get(seq_key(signer))
    return int(value) if value is not None else 0


def next_state_hash(previous: bytes, changes: Sequence[StateChange]) -> bytes:
    """``sha256(previous ‖ DAG-CBOR([[key, value], …]))``."""
    return hashlib.sha256(previous + dagcbor.encode([c.to_cbor() for c in changes])).digest()


class StateHasher:
    """Computes :func:`next_state_hash` while changes are made, encoding each once.

    A DAG-CBOR array is its length header followed by its items' encodings,
    so encoding items as they arrive and prefixing the header at the end gives
    the same bytes as encoding the finished list. Encoding at ``add`` time also
    rejects a non-encodable value at the transaction that produced it.
    """

    def __init__(self, previous: bytes) -> None:
        self._previous = previous
        self._parts: list[bytes] = []

    def add(self, changes: Iterable[StateChange]) -> None:
        """Add one transaction's changes: all of them, or (on error) none."""
        encoded = [dagcbor.encode(change.to_cbor()) for change in changes]
        self._parts.extend(encoded)

    def digest(self) -> bytes:
        head = array_header(len(self._parts))
        return hashlib.sha256(self._previous + head + b"".join(self._parts)).digest()


def array_header(length: int) -> bytes:
    """The CBOR header of an array of ``length`` items (major type 4, shortest form)."""
    if length < 24:
        return bytes([0x80 | length])
    if length < 1 << 8:
        return bytes([0x98, length])
    if length < 1 << 16:
        return b"\x99" + struct.pack(">H", length)
    if length < 1 << 32:
        return b"\x9a" + struct.pack(">I", length)
    return b"\x9b" + struct.pack(">Q", length)
