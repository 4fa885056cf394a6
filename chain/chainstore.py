"""The chain's RocksDB store: blocks and transactions by CID, a height index, the head.

Layout (one RocksDB database, default column family; rocksdict's non-raw
mode tags every key and value with a type byte, and ours are all ``bytes``):

* ``b"B" + CID`` → the block as it travels (:meth:`Block.encode`: header plus
  certificate). The CID is the header's, so a read decodes the block and
  checks that its header hashes to the key.
* ``b"T" + CID`` → a transaction's DAG-CBOR bytes; a read re-hashes them.
* ``b"N" + height (8 bytes, big-endian)`` → the block CID at that height, so
  an iterator walks the chain in height order.
* ``b"M:head"`` → height (8 bytes) + CID of the last block.

A block, its transactions, its height entry and the new head are written in
one ``WriteBatch`` with a synced WAL: after a crash the store holds the whole
block or none of it, and never a head without its block. Nothing is ever
deleted or overwritten by the node: the chain only grows.

Processes (DESIGN section 3). The store worker is the only writer: it holds
the *primary* instance (RocksDB's LOCK file makes a second primary fail with a
lock error, :class:`StoreLocked`). Web processes and commands open a
*secondary* instance in a private directory and call
``try_catch_up_with_primary`` before a read that misses. Every open passes
``Options(raw_mode=False)`` for the database and for the ``default`` family
(rocksdict 0.3.29 corrupts its own config file under concurrent opens
otherwise); every open builds those options the same way (:func:`_options`).
Handles are opened lazily, once per process (:func:`primary`,
:func:`reader`), never in ``AppConfig.ready()``.
"""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from django.conf import settings
from rocksdict import AccessType, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from chain.core.block import Block
from chain.core.cid import CID, DAG_CBOR
from chain.core.errors import CoreError, IntegrityError, NotFoundError
from chain.core.reasons import ValidationError
from chain.core.transaction import Transaction

_BLOCK = b"B"
_TX = b"T"
_HEIGHT = b"N"
_HEAD = b"M:head"
_HEIGHT_SIZE = 8


class StoreError(CoreError):
    """RocksDB refused an open, a read or a write."""


class StoreLocked(StoreError):
    """Another process (the store worker) holds the primary instance."""


class StoreUnavailable(StoreError):
    """There is no chain store yet (the store worker has not started it)."""


def _height_key(height: int) -> bytes:
    return _HEIGHT + struct.pack(">Q", height)


_WRITE_BUFFER = 8 * 1024 * 1024
"""Memtable budget. Small on purpose: a secondary replays the primary's unflushed
writes into its own memory, so this bounds what each web process holds."""


def _family_options() -> Options:
    opts = Options(raw_mode=False)
    opts.set_write_buffer_size(_WRITE_BUFFER)
    opts.set_max_write_buffer_number(2)
    return opts


def _options() -> Options:
    opts = _family_options()
    opts.create_if_missing(True)
    return opts


def open_rdict(path: str, *, secondary_path: str | None = None) -> Rdict:
    """Open ``path`` as the primary, or as a secondary living in ``secondary_path``."""
    access = AccessType.secondary(secondary_path) if secondary_path else AccessType.read_write()
    try:
        return Rdict(
            path,
            options=_options(),
            column_families={"default": _family_options()},
            access_type=access,
        )
    except Exception as exc:  # rocksdict raises bare Exception
        text = str(exc)
        if "lock" in text.lower():
            raise StoreLocked(f"the chain store {path} is held by another process: {text}") from None
        raise StoreError(f"cannot open the chain store {path}: {text}") from None


def _scratch_dir() -> str:
    """Secondary handles' private folders live in the node's data directory, not /tmp."""
    Path(settings.TMP_DIR).mkdir(parents=True, exist_ok=True)
    return str(settings.TMP_DIR)


class ChainStore:
    """Blocks and transactions of one chain in RocksDB (see the module docstring)."""

    def __init__(self, path: str | Path, *, secondary: bool = False, scan: bool = False) -> None:
        """``scan=True``: a handle for reading the whole chain once (``chain verify``); its
        reads bypass the block cache, so memory does not grow with what it read."""
        self.path = str(path)
        self.readonly = secondary
        self._secondary_dir: str | None = None
        if secondary:
            if not (Path(self.path) / "CURRENT").exists():
                raise StoreUnavailable(f"no chain store at {self.path} yet")
            self._secondary_dir = tempfile.mkdtemp(prefix="chain-2nd-", dir=_scratch_dir())
            try:
                self._db = open_rdict(self.path, secondary_path=self._secondary_dir)
            except StoreError:
                shutil.rmtree(self._secondary_dir, ignore_errors=True)
                raise
        else:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            self._db = open_rdict(self.path)
        if scan:
            reads = ReadOptions()
            reads.fill_cache(False)
            self._db.set_read_options(reads)
        self._sync = WriteOptions()
        self._sync.sync = True  # fsync the WAL: a block on disk before its projection commits
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        db = self._db
        del self._db
        if self.readonly:
            del db  # a secondary cannot flush; dropping the last reference closes it
        else:
            db.close()
        if self._secondary_dir:
            shutil.rmtree(self._secondary_dir, ignore_errors=True)

    def catch_up(self) -> None:
        """Secondary only: see what the primary wrote since the last catch-up."""
        if self.readonly:
            try:
                self._db.try_catch_up_with_primary()
            except Exception as exc:  # rocksdict raises bare Exception
                raise StoreError(f"cannot catch up with {self.path}: {exc}") from None

    # -- raw access (the verifier and tests) ----------------------------------------
    def _get(self, key: bytes) -> bytes | None:
        value = self._raw(key)
        if value is None and self.readonly:
            self.catch_up()
            value = self._raw(key)
        return value

    def _raw(self, key: bytes) -> bytes | None:
        try:
            value = self._db.get(key)
        except Exception as exc:  # rocksdict raises bare Exception
            raise IntegrityError(f"cannot read {key[:1]!r} entry from the chain store: {exc}") from None
        if value is not None and not isinstance(value, bytes):
            raise IntegrityError("a chain store entry is not a byte string")
        return value

    def block_bytes(self, cid: CID) -> bytes | None:
        return self._get(_BLOCK + cid.to_bytes())

    def tx_bytes_many(self, cids: Sequence[CID]) -> list[bytes | None]:
        if not cids:
            return []
        keys = [_TX + cid.to_bytes() for cid in cids]
        values = self._multi_get(keys)
        if self.readonly and any(v is None for v in values):
            self.catch_up()
            values = self._multi_get(keys)
        return values

    def _multi_get(self, keys: list[bytes]) -> list[bytes | None]:
        try:
            values = list(self._db.get(keys))
        except Exception as exc:  # rocksdict raises bare Exception
            raise IntegrityError(f"cannot read transactions from the chain store: {exc}") from None
        if any(v is not None and not isinstance(v, bytes) for v in values):
            raise IntegrityError("a chain store entry is not a byte string")
        return values

    # -- reads ----------------------------------------------------------------------------
    def head(self) -> tuple[int, CID] | None:
        """Height and CID of the last block, or None before genesis.

        The head moves, so a secondary catches up before reading it.
        """
        self.catch_up()
        raw = self._raw(_HEAD)
        if raw is None:
            return None
        if len(raw) <= _HEIGHT_SIZE:
            raise IntegrityError("the chain store's head entry is malformed")
        return struct.unpack(">Q", raw[:_HEIGHT_SIZE])[0], CID.from_bytes(raw[_HEIGHT_SIZE:])

    def cid_at(self, height: int) -> CID | None:
        raw = self._get(_height_key(height))
        return None if raw is None else CID.from_bytes(raw)

    def get_block(self, cid: CID) -> Block:
        """The block ``cid``, checked: it decodes and its header hashes to ``cid``."""
        raw = self.block_bytes(cid)
        if raw is None:
            raise NotFoundError(f"block {cid} is not in the chain store")
        return decode_block(cid, raw)

    def block_at(self, height: int) -> Block:
        cid = self.cid_at(height)
        if cid is None:
            raise NotFoundError(f"no block at height {height}")
        block = self.get_block(cid)
        if block.height != height:
            raise IntegrityError(f"the height index points {height} at a block of height {block.height}")
        return block

    def get_txs(self, cids: Sequence[CID], *, max_size: int | None = None) -> list[Transaction]:
        """The transactions ``cids``, each re-hashed against its CID."""
        out = []
        for cid, raw in zip(cids, self.tx_bytes_many(cids), strict=True):
            if raw is None:
                raise NotFoundError(f"transaction {cid} is not in the chain store")
            out.append(decode_tx(cid, raw, max_size=max_size))
        return out

    def heights(self, start: int = 0) -> Iterator[tuple[int, CID]]:
        """``(height, CID)`` from ``start`` in height order; the iterator is closed on exit."""
        it = self._db.iter()
        try:
            it.seek(_height_key(start))
            while it.valid():
                key = it.key()
                if not isinstance(key, bytes) or not key.startswith(_HEIGHT):
                    break
                yield struct.unpack(">Q", key[1:])[0], CID.from_bytes(it.value())
                it.next()
        finally:
            del it

    # -- writes (primary only) -------------------------------------------------------------
    def write_block(self, block: Block, txs: Sequence[Transaction]) -> int:
        """Store ``block``, its transactions, its height entry and the new head atomically.

        Returns the number of bytes of the encoded block.
        """
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        if [tx.cid for tx in txs] != list(block.txs):
            raise ValueError("the transactions given are not the ones the block links")
        encoded = block.encode()
        cid = block.cid.to_bytes()
        batch = WriteBatch(raw_mode=False)
        for tx in txs:
            batch.put(_TX + tx.cid.to_bytes(), tx.encoded)
        batch.put(_BLOCK + cid, encoded)
        batch.put(_height_key(block.height), cid)
        batch.put(_HEAD, struct.pack(">Q", block.height) + cid)
        try:
            self._db.write(batch, self._sync)
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"cannot write block {block.height} to {self.path}: {exc}") from None
        return len(encoded)

    def put_raw(self, key: bytes, value: bytes) -> None:
        """Overwrite one raw entry (tests use it to simulate tampering)."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        self._db.put(key, value)

    @staticmethod
    def block_key(cid: CID) -> bytes:
        return _BLOCK + cid.to_bytes()

    @staticmethod
    def tx_key(cid: CID) -> bytes:
        return _TX + cid.to_bytes()


def decode_block(cid: CID, raw: bytes) -> Block:
    try:
        block = Block.decode(raw)
    except ValidationError as exc:
        raise IntegrityError(f"block {cid} does not decode: {exc.message}") from None
    if block.cid != cid:
        raise IntegrityError(f"the stored bytes of block {cid} hash to {block.cid}")
    return block


def decode_tx(cid: CID, raw: bytes, *, max_size: int | None = None) -> Transaction:
    if CID.of(DAG_CBOR, raw) != cid:
        raise IntegrityError(f"the stored bytes of transaction {cid} do not hash to it")
    try:
        return Transaction.decode(raw, max_size=max_size)
    except ValidationError as exc:
        raise IntegrityError(f"transaction {cid} does not decode: {exc.message}") from None


# -- process-level handles -----------------------------------------------------------------
_lock = threading.Lock()
_primary: ChainStore | None = None
_secondary: ChainStore | None = None


def _path() -> str:
    return str(Path(settings.CHAIN_DIR))


def primary() -> ChainStore:
    """This process's read-write handle; :class:`StoreLocked` if another process has it."""
    global _primary
    with _lock:
        if _primary is None or _primary.path != _path():
            if _primary is not None:
                _primary.close()
            _primary = ChainStore(_path())
        return _primary


def reader() -> ChainStore:
    """A handle for reading: the primary if this process holds it, else a secondary.

    Raises :class:`StoreUnavailable` before the store worker created the store.
    """
    global _secondary
    with _lock:
        if _primary is not None and _primary.path == _path():
            return _primary
        if _secondary is None or _secondary.path != _path():
            if _secondary is not None:
                _secondary.close()
            _secondary = ChainStore(_path(), secondary=True)
        return _secondary


def holds_primary() -> bool:
    with _lock:
        return _primary is not None and _primary.path == _path()


def close_all() -> None:
    """Close this process's handles (tests; process exit)."""
    global _primary, _secondary
    with _lock:
        for store in (_primary, _secondary):
            if store is not None:
                store.close()
        _primary = _secondary = None


atexit.register(close_all)
