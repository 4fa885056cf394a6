"""The content-addressed block store, on RocksDB through rocksdict.

Layout. One RocksDB database with two column families:

* ``blocks``: key = binary CID, value = block bytes. Compression is off
  (blocks are ciphertext, incompressible). Values stay inline rather than in
  blob files: secondary instances, which web processes read through, crash on
  blob values in the RocksDB that rocksdict 0.3.29 bundles.
* ``default``: metadata. ``b"p" + cid`` → pin count (ASCII decimal);
  ``b"m" + cid`` → JSON import parameters of an object added by
  :func:`add_file`.

Every open passes ``options=Options(raw_mode=False)`` and an explicit
``Options(raw_mode=False)`` for every column family, ``default`` included:
rocksdict ≤ 0.3.29 rewrites its own config file on each open without
truncating it, and only identical options make concurrent opens harmless.
In this mode rocksdict tags each key and value with a type byte; keys and
values here are always ``bytes`` (type 1), so what is stored is
``0x01 || CID`` → ``0x01 || block``.

Correctness argument.

* Nothing enters ``blocks`` unverified: :meth:`BlockStore.put` and
  :meth:`BlockStore.put_many` hash the bytes against the CID first;
  :func:`import_car` hashes every block before storing it; the one path that
  skips the re-hash (:func:`add_file`) stores only immutable ``bytes`` whose
  CID the builder computed from those very objects. One exception, for speed:
  a large add or import from the node's own file (a spool file) has its SST
  files written by a helper process, which reads the blocks back from that
  same open file at the offsets this process hashed (:mod:`.sstwriter`);
  nothing writes those bytes meanwhile, and :meth:`BlockStore.get` would
  refuse a block that did not match.
* Bulk adds skip the write-ahead log (half the bytes written) and flush the
  blocks family before they return and before any pin is written, so no pin
  or caller can outlive, through a crash, a block it relies on. Single puts
  use the WAL and are durable on return.
* A CAR import writes no block into the database until the whole CAR is read,
  verified and (when pinning) found complete: its blocks go into sorted SST
  files of its own, fsynced as they are finished, which one
  ``ingest_external_file`` call then adds atomically (all files or none, the
  manifest synced before it returns). A failed import never touched the
  store, so it has nothing to undo and cannot delete a block another import
  or a pin relies on; a killed one leaves files in the staging directory,
  which the next primary open removes.
* Nothing leaves unverified: :meth:`BlockStore.get` re-hashes every block and
  raises :class:`IntegrityError` on a mismatch or an undecodable value, and
  :class:`NotFoundError` on a miss. It never returns wrong bytes.
* Garbage collection never deletes a block reachable from a pin: it marks by
  walking every pinned DAG and refuses to sweep if any pinned DAG cannot be
  walked (a missing or corrupt interior node hides what lies below it). Writers
  that put blocks and then pin them (:func:`add_file`, :func:`import_car`) hold
  a shared guard that :meth:`BlockStore.gc` takes exclusively, so a sweep can
  never fall between a block's write and its pin.
* Only one process may open a database read-write (RocksDB's lock enforces it);
  readers in other processes open it as a *secondary* instance, which sees the
  primary's writes after :meth:`BlockStore.catch_up`. A secondary ``get`` or
  ``has`` that misses catches up once and retries before reporting a miss.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import shutil
import stat
import tempfile
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from os import PathLike
from typing import Any, BinaryIO

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    DBCompressionType,
    IngestExternalFileOptions,
    Options,
    Rdict,
    ReadOptions,
    SstFileWriter,
    WriteBatch,
    WriteOptions,
)

from .car import CarReader, CarStats, block_links, write_car
from .cid import CID, RAW
from .errors import CodecError, CoreError, IntegrityError, NotFoundError
from .sstwriter import Entry, Helper, HelperError, HelperPool, source_spec
from .unixfs import PROFILE_2025, BuildResult, ChunkParams, FileReader, FileStat, build_file

BLOCKS_CF = "blocks"
_PIN = b"p"
_META = b"m"
BATCH_BYTES = 2 * 1024 * 1024
"""Blocks are written in WriteBatches of about this many bytes."""
SEGMENT_BYTES = 16 * 1024 * 1024
"""A CAR import writes its blocks into sorted SST files of about this many bytes.

Each file costs a fixed ~15 ms (its fsync, its share of the ingestion), so
larger is faster; an import holds at most three segments in memory (one
filling, one queued, one being written). Measured on the project's 2-core
machines, 256 MiB of 1 MiB blocks into SSTs then ingested: 4 MiB 0.59 s,
8 MiB 0.44 s, 16 MiB 0.35 s, 32 MiB 0.25 s; through memtables 0.65 s."""
HELPER_MIN_BYTES = 32 * 1024 * 1024
"""Adds at least this large write SST files through a helper process (:mod:`.sstwriter`).

Smaller ones go through memtables: an SST file costs a fixed ~15 ms (its
fsync, its ingestion, a level-0 file until compaction), and the helper's
start (~0.15 s, once per process) pays off only on large objects."""
FILE_SEGMENT_BYTES = 32 * 1024 * 1024
"""Segments of blocks read back from a file by offset are larger: they cost no memory.

Measured adding 256 MiB from a file: 16 MiB segments 0.52x the SHA-256
ceiling, 32 MiB 0.65x, 64 MiB 0.64x."""
INLINE_SEGMENT_BYTES = 8 * 1024 * 1024
"""Segments an add sends to the helper inline (not from a file): three are in memory at
once here (one filling, one queued, one being sent) and one in the helper."""
_COMPACTION_READAHEAD = 256 * 1024
"""Each input file of a compaction reads ahead this much (RocksDB's default is 2 MiB).

A large add ingests all its files into level 0 at once (a 1 GiB inline add,
128 files), and the compaction it starts opens every one of them: with 2 MiB
each, the store worker's RSS jumped by 50–110 MiB at the add's end in 4 of
28 runs of the bench's 1 GiB add, and never with compaction turned off
(10 runs). With 256 KiB: 12 runs of 12 within the add's own bound, and the
compaction after a 1 GiB add into a 1 GiB store took 7.6–8.7 s against
7.8–8.4 s (3 pairs). Blocks are 1 MiB: reading further ahead saves nothing."""
_L0_SLOWDOWN = 400
_L0_STOP = 600
_STAGING = "ingest"
"""Directory inside the database's where imports write their SST files before ingesting them."""
_WRITE_BUFFER = 8 * 1024 * 1024
"""Per-memtable budget for the blocks family (three at most): bounds an import's RSS.

Measured on the project's 2-core machines, 256 MiB of 1 MiB blocks written
without the WAL: 8 MiB memtables, two of them, one background job: 0.5 s;
three, with two background jobs (one flushes while the next fills): 0.4 s.
Larger memtables write faster (32 MiB: 0.24 s) but break an upload's 64 MiB
bound on memory growth (tests/records/clinical/test_uploads.py)."""


def _no_wal() -> WriteOptions:
    opts = WriteOptions()
    # The stub declares a method; rocksdict 0.3.29 exposes a property.
    opts.disable_wal = True  # type: ignore[method-assign,assignment]
    return opts


_NO_WAL = _no_wal()


def _synced() -> WriteOptions:
    opts = WriteOptions()
    opts.sync = True
    return opts


_SYNC = _synced()
"""For pins: a pin is on disk before the row that relies on it commits (the blocks it holds are already)."""


def _block_read_options() -> ReadOptions:
    """RocksDB's CRCs are skipped on block reads: every block is re-hashed with
    SHA-256 by :meth:`BlockStore.get`, which catches strictly more."""
    opts = ReadOptions()
    opts.set_verify_checksums(False)
    return opts


class StoreError(CoreError):
    """RocksDB refused an operation (open, write) for a reason other than the data."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted through a secondary (read-only) instance."""


# -- opening --------------------------------------------------------------------------
def _db_options() -> Options:
    opts = Options(raw_mode=False)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_max_background_jobs(2)  # one per core: a memtable flushes while the next fills
    opts.set_compaction_readahead_size(_COMPACTION_READAHEAD)
    return opts


def _blocks_options() -> Options:
    opts = Options(raw_mode=False)
    opts.set_compression_type(DBCompressionType.none())
    # No blob files: RocksDB secondary instances (how web processes read) crash
    # reading blob values (facebook/rocksdb#13296, #13248), so blocks stay inline.
    opts.set_write_buffer_size(_WRITE_BUFFER)
    opts.set_max_write_buffer_number(3)
    # A CAR import ingests all its SST files at once, overlapping each other,
    # so all land in level 0: a 2 GiB object is ~130 files. With the default
    # triggers (slowdown 20, stop 36 files) the next write, its pin, would
    # wait for a compaction of the whole object (1 GiB: 3.5 s). Compaction
    # still starts at 4 files; a read asks each level-0 file's bloom filter.
    opts.set_level_zero_slowdown_writes_trigger(_L0_SLOWDOWN)
    opts.set_level_zero_stop_writes_trigger(_L0_STOP)
    # A bloom filter answers "not here" without reading index blocks: an import
    # asks it of every block it brings (256 MiB of 1 MiB blocks into a store
    # holding 1 GiB: 0.4 ms a block without one).
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def open_rdict(path: str, *, secondary_path: str | None = None) -> Rdict:
    """Open the database with the project's explicit options (see module docstring)."""
    access = AccessType.secondary(secondary_path) if secondary_path else AccessType.read_write()
    try:
        return Rdict(
            path,
            options=_db_options(),
            column_families={"default": Options(raw_mode=False), BLOCKS_CF: _blocks_options()},
            access_type=access,
        )
    except Exception as exc:  # rocksdict raises bare Exception
        raise StoreError(f"cannot open block store at {path}: {exc}") from None


# -- results ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """Import parameters recorded with an object added by :func:`add_file`."""

    chunk_size: int
    max_links: int
    size: int
    blocks: int
    depth: int
    layout: str = "balanced"
    raw_leaves: bool = True
    cid_version: int = 1


@dataclass(frozen=True, slots=True)
class GcResult:
    marked: int  # blocks reachable from pins
    removed: int  # blocks deleted


@dataclass(frozen=True, slots=True)
class AddResult:
    root: CID
    size: int
    blocks: int
    depth: int
    chunk_size: int
    max_links: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class ImportResult:
    roots: tuple[CID, ...]
    blocks: int
    bytes: int
    pinned: bool


class _GcGuard:
    """Many writers share it; gc holds it alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._collecting = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting)
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._collecting)
            self._collecting = True
            self._cond.wait_for(lambda: self._writers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._collecting = False
                self._cond.notify_all()


# -- the store ---------------------------------------------------------------------------------
class BlockStore:
    """Blocks by CID, pins with reference counts, gc, verification.

    ``BlockStore(path)`` opens (creating if needed) the primary, read-write
    instance: one process only. ``BlockStore(path, readonly_secondary=True)``
    opens a secondary, read-only instance that any number of other processes
    may hold; ``secondary_path`` is its private directory (a temporary one,
    removed on close, when omitted).
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        readonly_secondary: bool = False,
        secondary_path: str | PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly_secondary
        self._owned_secondary: str | None = None
        if readonly_secondary:
            if secondary_path is None:
                secondary_path = self._owned_secondary = tempfile.mkdtemp(prefix="blocks-2nd-")
            self._db = open_rdict(self.path, secondary_path=str(secondary_path))
        else:
            self._db = open_rdict(self.path)
            # SST files of imports a killed process left unfinished; RocksDB's lock makes this process the only writer.
            shutil.rmtree(os.path.join(self.path, _STAGING), ignore_errors=True)
        self._blocks = self._db.get_column_family(BLOCKS_CF)
        self._blocks.set_read_options(_block_read_options())
        self._blocks_cf = self._db.get_column_family_handle(BLOCKS_CF)
        self._unflushed = False  # blocks written without the WAL since the last flush
        self._flush_lock = threading.Lock()
        self._meta_lock = threading.Lock()  # pin counts are read-modify-write
        self._guard = _GcGuard()
        self._open_iterators: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()
        self._reader = FileReader(self.get)
        self._helpers = HelperPool()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Close live iterators, then the column family handles, then the database."""
        if self._closed:
            return
        self._closed = True
        self._helpers.close()
        for gen in list(self._open_iterators):
            gen.close()
        del self._blocks, self._blocks_cf
        db = self._db
        del self._db
        if self.readonly:
            del db  # a secondary cannot flush; dropping the last reference closes it
        else:
            db.close()
        if self._owned_secondary:
            shutil.rmtree(self._owned_secondary, ignore_errors=True)

    def start_helper(self) -> None:
        """Start the SST helper processes now rather than at the first large add (~0.15 s, once);
        return once they have started."""
        self._check_writable()
        helpers = [self._helpers.take() for _ in range(_HelperSstSink.HELPERS)]
        healthy = True
        try:
            for helper in helpers:
                helper.ready()
        except HelperError as exc:
            healthy = False
            raise StoreError(f"cannot start an SST helper process: {exc}") from None
        finally:
            for helper in helpers:
                self._helpers.give_back(helper, healthy=healthy)

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def catch_up(self) -> None:
        """Secondary only: replay what the primary has written since the last catch-up."""
        if not self.readonly:
            return
        try:
            self._db.try_catch_up_with_primary()
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"secondary could not catch up with {self.path}: {exc}") from None

    # -- blocks --------------------------------------------------------------------------
    def put(self, cid: CID, data: bytes | bytearray | memoryview) -> None:
        """Store one block after checking that it hashes to ``cid``."""
        self.put_many([(cid, data)])

    def put_pinned(self, cid: CID, data: bytes | bytearray | memoryview) -> int:
        """Store one block and pin it with nothing in between for a collection to take.

        The DAG under it must already be stored (as for :meth:`pin`). Returns the new pin count.
        """
        self._check_writable()
        with self._guard.shared():
            self.put(cid, data)
            return self._pin_complete(cid)

    def put_many(self, blocks: Iterable[tuple[CID, bytes | bytearray | memoryview]]) -> int:
        """Verify every block, then store them all in one WriteBatch; return the count.

        If any block fails verification nothing is written.
        """
        checked = []
        for cid, data in blocks:
            data = bytes(data)
            if not cid.verify(data):
                actual = CID.of(cid.codec, data)
                raise IntegrityError(f"refusing to store {cid}: the data hashes to {actual}")
            checked.append((cid, data))
        self._write_verified(checked)
        return len(checked)

    def _write_verified(self, blocks: list[tuple[CID, bytes]], *, bulk: bool = False) -> None:
        """Write blocks already known to match their CIDs (immutable bytes only).

        ``bulk`` skips the write-ahead log, halving the bytes written. Such
        blocks can be lost in a crash until the blocks family is flushed, so
        :meth:`_add_pin` flushes before it writes any pin: no pin can survive a
        crash that its blocks did not.
        """
        self._check_writable()
        if not blocks:
            return
        batch = WriteBatch(raw_mode=False)
        batch.set_default_column_family(self._blocks_cf)
        for cid, data in blocks:
            if type(data) is not bytes:  # rocksdict would pickle anything else
                raise TypeError("blocks must be bytes")
            batch.put(cid.to_bytes(), data)
        if bulk:
            with self._flush_lock:  # write and flag together, or a flush could miss it
                self._write(batch, _NO_WAL)
                self._unflushed = True
        else:
            self._write(batch)

    def _flush_blocks(self) -> None:
        """Persist blocks written without the WAL (see :meth:`_write_verified`)."""
        with self._flush_lock:
            if not self._unflushed:
                return
            try:
                self._blocks.flush(True)
            except Exception as exc:  # rocksdict raises bare Exception
                raise StoreError(f"flush of {self.path} failed: {exc}") from None
            self._unflushed = False

    def _staging_dir(self) -> str:
        """A fresh directory for one import's SST files (on the database's file system, so ingestion moves them)."""
        self._check_writable()
        staging = os.path.join(self.path, _STAGING)
        os.makedirs(staging, exist_ok=True)
        return tempfile.mkdtemp(prefix="car-", dir=staging)

    def _ingest(self, paths: list[str]) -> None:
        """Add the blocks of SST files written by :class:`_SstSink`, all or none, durably."""
        self._check_writable()
        if not paths:
            return
        opts = IngestExternalFileOptions()
        opts.set_move_files(True)  # hard links: the bytes are written once
        try:
            self._blocks.ingest_external_file(paths, opts)
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"ingesting {len(paths)} SST file(s) into {self.path} failed: {exc}") from None

    def get(self, cid: CID) -> bytes:
        """The block's bytes, re-hashed: :class:`IntegrityError` if they do not match."""
        value = self._lookup(cid)
        if value is None:
            raise NotFoundError(f"block {cid} is not in the store at {self.path}")
        if type(value) is not bytes or not cid.verify(value):
            raise IntegrityError(f"block {cid} is corrupt: stored bytes do not hash to its CID")
        return value

    def has(self, cid: CID) -> bool:
        """Whether the block is stored (not re-hashed; use :meth:`get` to verify)."""
        key = cid.to_bytes()
        if self._contains(key):
            return True
        if self.readonly:
            self.catch_up()
            return self._contains(key)
        return False

    def _contains(self, key: bytes) -> bool:
        try:
            return key in self._blocks
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"cannot read {self.path}: {exc}") from None

    def _lookup(self, cid: CID) -> object:
        key = cid.to_bytes()
        value = self._raw_get(cid, key)
        if value is None and self.readonly:
            self.catch_up()
            value = self._raw_get(cid, key)
        return value

    def _raw_get(self, cid: CID, key: bytes) -> object:
        try:
            return self._blocks.get(key)
        except Exception as exc:  # rocksdict raises bare Exception
            text = str(exc)
            if "Corruption" in text or "value type" in text or "utf-8" in text:
                raise IntegrityError(f"block {cid} is corrupt: {text}") from None
            raise StoreError(f"cannot read {cid} from {self.path}: {text}") from None

    def iter_cids(self) -> Iterator[CID]:
        """Every stored CID, in key order. Closed by :meth:`close` if still open."""
        gen = self._iter_cids()
        self._open_iterators.add(gen)
        return gen

    def _iter_cids(self) -> Generator[CID, None, None]:
        it = self._blocks.iter()
        try:
            it.seek_to_first()
            while it.valid():
                yield CID.from_bytes(it.key())
                it.next()
        finally:
            del it

    # -- files ---------------------------------------------------------------------------
    def cat(self, root: CID, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream bytes of the UnixFS file ``root`` (every block verified)."""
        return self._reader.read(root, offset, length)

    def stat(self, root: CID) -> FileStat:
        """Size, blocks, depth and inferred chunk parameters of a UnixFS file."""
        return self._reader.stat(root)

    def object_meta(self, root: CID) -> ObjectMeta | None:
        """Import parameters recorded by :func:`add_file`, or None."""
        raw = self._db.get(_META + root.to_bytes())
        if raw is None:
            return None
        return ObjectMeta(**json.loads(raw))

    # -- pins ----------------------------------------------------------------------------
    def pin_count(self, cid: CID) -> int:
        raw = self._db.get(_PIN + cid.to_bytes())
        return 0 if raw is None else int(raw)

    def pins(self) -> dict[CID, int]:
        """Pinned roots and their counts."""
        out: dict[CID, int] = {}
        for key, value in self._prefix_items(_PIN):
            out[CID.from_bytes(key[len(_PIN) :])] = int(value)
        return out

    def pin(self, cid: CID) -> int:
        """Add one reference to ``cid``; the whole DAG under it must be stored.

        Raises :class:`NotFoundError` naming the missing blocks otherwise, so a
        pin always means "this DAG is complete here". Returns the new count.
        """
        self._check_writable()
        with self._guard.shared():
            return self._pin_complete(cid)

    def _pin_complete(self, cid: CID) -> int:
        missing = self.missing(cid, trust_pins=True)
        if missing:
            shown = ", ".join(str(c) for c in missing[:3])
            raise NotFoundError(f"cannot pin {cid}: {len(missing)} block(s) missing, e.g. {shown}")
        return self._add_pin(cid, None)

    def _add_pin(self, cid: CID, meta: ObjectMeta | None) -> int:
        with self._meta_lock:
            self._flush_blocks()
            count = self.pin_count(cid) + 1
            batch = WriteBatch(raw_mode=False)
            batch.put(_PIN + cid.to_bytes(), str(count).encode())
            if meta is not None:
                batch.put(_META + cid.to_bytes(), json.dumps(asdict(meta)).encode())
            self._write(batch, _SYNC)
            return count

    def unpin(self, cid: CID) -> int:
        """Drop one reference; return the remaining count. :class:`NotFoundError` if unpinned."""
        self._check_writable()
        with self._meta_lock:
            count = self.pin_count(cid)
            if count == 0:
                raise NotFoundError(f"{cid} is not pinned")
            batch = WriteBatch(raw_mode=False)
            key = _PIN + cid.to_bytes()
            if count == 1:
                batch.delete(key)
            else:
                batch.put(key, str(count - 1).encode())
            self._write(batch)
            return count - 1

    # -- walking, verification, gc ----------------------------------------------------------
    def missing(self, root: CID, *, trust_pins: bool = False) -> list[CID]:
        """Blocks under ``root`` that are absent. Interior blocks are fetched and
        verified (a corrupt one raises); raw leaves are only looked up.

        ``trust_pins``: a pinned DAG below ``root`` counts as whole without a
        walk (every pin was written after its DAG was found complete, and gc
        keeps what pins reach). Pinning a manifest over a freshly added file
        then costs one lookup, not one per block of the file.
        """
        missing: list[CID] = []
        seen: set[CID] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            if trust_pins and cid != root and self.pin_count(cid) > 0:
                continue
            if cid.codec == RAW:
                if not self.has(cid):
                    missing.append(cid)
                continue
            try:
                data = self.get(cid)
            except NotFoundError:
                missing.append(cid)
                continue
            stack.extend(reversed(block_links(cid, data)))
        return missing

    def verify(self, roots: Iterable[CID] | None = None) -> list[CID]:
        """CIDs that are corrupt or missing.

        With ``roots``: every block of those DAGs is fetched and re-hashed;
        missing and corrupt blocks are reported (nothing below them is
        reachable). Without: every stored block is re-hashed; corrupt ones are
        reported.
        """
        if roots is None:
            bad = []
            for cid in self.iter_cids():
                try:
                    self.get(cid)
                except (IntegrityError, NotFoundError):
                    bad.append(cid)
            return bad
        bad, seen = [], set()
        stack = list(reversed(list(roots)))
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            try:
                data = self.get(cid)
                links = block_links(cid, data)
            except (IntegrityError, NotFoundError, CodecError):
                bad.append(cid)
                continue
            stack.extend(reversed(links))
        return bad

    def gc(self) -> GcResult:
        """Delete every block not reachable from a pin; drop metadata of unpinned roots.

        Raises (and deletes nothing) if a pinned DAG cannot be walked.
        """
        self._check_writable()
        with self._guard.exclusive():
            marked: set[CID] = set()
            for root in self.pins():
                self._mark(root, marked)
            removed = self._sweep(marked)
            self._drop_stale_meta()
            return GcResult(len(marked), removed)

    def _mark(self, root: CID, marked: set[CID]) -> None:
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in marked:
                continue
            marked.add(cid)
            if cid.codec != RAW:
                stack.extend(block_links(cid, self.get(cid)))

    def _sweep(self, marked: set[CID]) -> int:
        return self._delete_blocks(cid for cid in self.iter_cids() if cid not in marked)

    def _delete_blocks(self, cids: Iterable[CID]) -> int:
        removed = 0
        batch = WriteBatch(raw_mode=False)
        batch.set_default_column_family(self._blocks_cf)
        for cid in cids:
            batch.delete(cid.to_bytes())
            removed += 1
            if len(batch) >= 10_000:
                self._write(batch)
                batch = WriteBatch(raw_mode=False)
                batch.set_default_column_family(self._blocks_cf)
        if len(batch):
            self._write(batch)
        return removed

    def _drop_stale_meta(self) -> None:
        pinned = {cid.to_bytes() for cid in self.pins()}
        batch = WriteBatch(raw_mode=False)
        for key, _value in self._prefix_items(_META):
            if key[len(_META) :] not in pinned:
                batch.delete(key)
        if len(batch):
            self._write(batch)

    # -- internals ------------------------------------------------------------------------
    def _prefix_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Metadata entries under ``prefix`` (few: one per pinned object)."""
        out = []
        it = self._db.iter()
        try:
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not isinstance(key, bytes) or not key.startswith(prefix):
                    break
                out.append((key, it.value()))
                it.next()
        finally:
            del it
        return out

    def _write(self, batch: WriteBatch, options: WriteOptions | None = None) -> None:
        try:
            self._db.write(batch, options or WriteOptions())
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"write to {self.path} failed: {exc}") from None

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyStoreError(f"{self.path} is open as a read-only secondary")


# -- imports and exports -----------------------------------------------------------------------
class _WriterThread(ABC):
    """Blocks gathered into batches of about ``limit`` bytes, each written by a thread of its own.

    The caller reads and hashes while the thread writes the previous batch:
    hashlib and RocksDB both release the GIL, so the two overlap on two cores.
    At most ``depth`` full batches wait for the writer, which bounds memory. A
    write that failed is raised by the next call or by :meth:`close`. Use it as
    a context manager: leaving on an exception stops the writer and drops what
    it had not yet written. Subclasses say how a batch is written.
    """

    name = "blockstore-writer"

    def __init__(self, limit: int, *, depth: int) -> None:
        self._limit = limit
        self._blocks: list[tuple[Any, bytes]] = []
        self._bytes = 0
        self._queue: queue.Queue[list[tuple[Any, bytes]] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _key(self, cid: CID, data: bytes) -> Any:
        return cid

    @abstractmethod
    def _write(self, batch: list[tuple[Any, bytes]]) -> None:
        """Write one batch (on the writer thread)."""

    def __call__(self, cid: CID, data: bytes) -> None:
        self._blocks.append((self._key(cid, data), data))
        self._bytes += len(data)
        if self._bytes >= self._limit:
            self._hand_over()

    def _finish(self) -> None:
        """Write what is left and wait for the writer; raise its error, if any."""
        if self._blocks:
            self._hand_over()
        self._queue.put(None)
        self._thread.join()
        self._raise_failure()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self._abandoned = True
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)  # wake a writer waiting on an empty queue
            self._thread.join()

    def _hand_over(self) -> None:
        self._raise_failure()
        # The builder and the CAR reader give immutable bytes whose CIDs they computed or checked.
        self._queue.put(self._blocks)
        self._blocks, self._bytes = [], 0

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None and not self._abandoned:
            try:
                self._write(batch)
            except BaseException as exc:  # handed over to the caller's thread
                self._error = exc
                self._abandoned = True
        while not self._queue.empty():  # a caller blocked on a full queue goes on, and sees the error
            self._queue.get_nowait()


class _BatchSink(_WriterThread):
    """Writes verified blocks into the store in batches of about ``limit`` bytes (``add_file``)."""

    def __init__(self, store: BlockStore, limit: int, *, depth: int = 2) -> None:
        self._store = store
        super().__init__(limit, depth=depth)

    def _write(self, batch: list[tuple[Any, bytes]]) -> None:
        self._store._write_verified(batch, bulk=True)

    def close(self) -> None:
        """Write what is left and wait for the writer; raise its error, if any."""
        self._finish()

    def __enter__(self) -> _BatchSink:
        return self


class _SstSink(_WriterThread):
    """Writes verified blocks into sorted SST files of about ``limit`` bytes, on a writer thread of its own.

    RocksDB needs an SST file's keys in order and a CAR's are not, so blocks
    are gathered into segments, each sorted and written as one file (a block
    repeated within a segment is written once; across segments, later files
    win, with the same bytes). The caller reads and hashes the next segment
    while the thread writes the previous one: at most one full segment waits
    for the writer, which bounds memory to about three segments. Nothing
    reaches the database here: :meth:`close` returns the files for
    :meth:`BlockStore._ingest`. Leaving the context, on success or not, stops
    the writer and removes the files (ingestion has moved them).
    """

    name = "blockstore-sst-writer"

    def __init__(self, store: BlockStore, limit: int, *, depth: int = 1) -> None:
        self._dir = store._staging_dir()
        self._paths: list[str] = []
        super().__init__(limit, depth=depth)

    def _key(self, cid: CID, data: bytes) -> bytes:
        if type(data) is not bytes:  # rocksdict would pickle anything else
            raise TypeError("blocks must be bytes")
        return cid.to_bytes()

    def _write(self, batch: list[tuple[Any, bytes]]) -> None:
        self._write_sst(batch)

    def at(self, cid: CID, data: bytes, offset: int | None) -> None:
        """A verified block (read at ``offset`` of the source; these files take the bytes as they are)."""
        self(cid, data)

    def close(self) -> list[str]:
        """Write what is left and wait for the writer; the finished files, or the writer's error."""
        self._finish()
        return list(self._paths)

    def __enter__(self) -> _SstSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        super().__exit__(kind, *exc)
        self._thread.join()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _write_sst(self, segment: list[tuple[bytes, bytes]]) -> None:
        segment.sort(key=lambda block: block[0])
        path = os.path.join(self._dir, f"{len(self._paths):06d}.sst")
        writer = SstFileWriter(options=_blocks_options())  # the blocks family's encoding and table format
        try:
            writer.open(path)
            previous = None
            for key, data in segment:
                if key != previous:
                    writer[key] = data
                    previous = key
            writer.finish()  # fsyncs the file
        except Exception as exc:  # rocksdict raises bare Exception
            raise StoreError(f"cannot write SST file {path}: {exc}") from None
        self._paths.append(path)


class _HelperSstSink(_SstSink):
    """An :class:`_SstSink` whose files a helper process writes (:mod:`.sstwriter`), on another core.

    ``source``: the regular file the blocks are read from and the offset of
    its next byte. Its raw leaves (the file's chunks, in order) then travel as
    offsets, which the helper reads back from the same open file; everything
    else goes inline. :attr:`file_bytes` says how many bytes the leaves
    covered, for the caller to check against what it built.
    """

    name = "blockstore-sst-helper"
    HELPERS = 2
    """Files are written by two helpers in turn: one writes while the other waits for its fsync."""

    def __init__(self, store: BlockStore, limit: int, *, source: tuple[int, int] | None = None) -> None:
        self._pool = store._helpers
        self._helpers: list[Helper] = []
        try:
            for _ in range(self.HELPERS):
                self._helpers.append(self._pool.take())
        except OSError as exc:  # could not start one: the ones started are kept for later
            for helper in self._helpers:
                self._pool.give_back(helper, healthy=True)
            raise StoreError(f"cannot start an SST helper process: {exc}") from None
        self._sent: list[str | None] = [None] * self.HELPERS  # the file each helper is writing
        self._broken: set[int] = set()  # helpers that failed: not kept
        self._source_path = source_spec(source[0]) if source else None
        self._start = self._offset = source[1] if source else 0
        self._count = 0
        # Offsets are a few bytes a block: from a file, a second queued segment costs nothing.
        super().__init__(store, limit, depth=2 if source else 1)

    @property
    def file_bytes(self) -> int:
        return self._offset - self._start

    def __call__(self, cid: CID, data: bytes) -> None:
        """A block of a file being added: a raw leaf is the source's next chunk."""
        if self._source_path is not None and cid.codec == RAW:
            self.at(cid, data, self._offset)
            self._offset += len(data)
        else:
            self.at(cid, data, None)

    def at(self, cid: CID, data: bytes, offset: int | None) -> None:
        """A verified block whose bytes are also at ``offset`` in the source (``None``: send them)."""
        entry: Entry
        if offset is not None and self._source_path is not None:
            entry = (cid.to_bytes(), offset, len(data))
        else:
            entry = (self._key(cid, data), data)
        self._blocks.append(entry)  # type: ignore[arg-type]
        self._bytes += len(data)
        if self._bytes >= self._limit:
            self._hand_over()

    def _write(self, batch: list[Any]) -> None:
        """Send the batch to the next helper in turn, once that one has finished its previous file."""
        turn = self._count % self.HELPERS
        self._count += 1
        self._collect(turn)
        path = os.path.join(self._dir, f"{self._count - 1:06d}.sst")
        try:
            self._helpers[turn].send(path, self._source_path, batch)
        except HelperError as exc:
            self._broken.add(turn)
            raise StoreError(f"cannot write SST file {path}: {exc}") from None
        self._sent[turn] = path

    def _collect(self, turn: int) -> None:
        """Wait for the file helper ``turn`` is writing, if any; it joins the finished files."""
        path = self._sent[turn]
        if path is None:
            return
        self._sent[turn] = None
        try:
            self._helpers[turn].wait()
        except HelperError as exc:
            self._broken.add(turn)
            raise StoreError(f"cannot write SST file {path}: {exc}") from None
        self._paths.append(path)

    def close(self) -> list[str]:
        """Write what is left, wait for both helpers; the finished files, or the first error."""
        self._finish()
        for turn in range(self.HELPERS):
            self._collect(turn)
        return list(self._paths)

    def __enter__(self) -> _HelperSstSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        _WriterThread.__exit__(self, kind, *exc)
        self._thread.join()
        for turn in range(self.HELPERS):  # a file still being written must be finished before the directory goes
            with contextlib.suppress(StoreError):
                self._collect(turn)
        shutil.rmtree(self._dir, ignore_errors=True)
        for turn, helper in enumerate(self._helpers):
            self._pool.give_back(helper, healthy=turn not in self._broken)


def _file_source(stream: BinaryIO) -> tuple[int, int] | None:
    """The descriptor and position of the regular file ``stream`` reads directly, if it does."""
    if type(stream) is not io.BufferedReader:
        return None
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fd, stream.tell()
    except (OSError, ValueError):
        return None


def _expected_size(source: tuple[int, int] | None, size_hint: int | None) -> int:
    if source is not None:
        return os.fstat(source[0]).st_size - source[1]
    return size_hint or 0


def add_file(
    store: BlockStore,
    stream: BinaryIO,
    *,
    chunk_size: int = PROFILE_2025.chunk_size,
    max_links: int = PROFILE_2025.max_links,
    pin: bool = True,
    batch_bytes: int = BATCH_BYTES,
    size_hint: int | None = None,
    source_fd: int | None = None,
) -> AddResult:
    """Stream a file into the store as a UnixFS DAG; pin it and record its parameters.

    An object of :data:`HELPER_MIN_BYTES` or more (a regular file's size, or
    ``size_hint`` for other streams) is hashed here while a helper process
    writes the blocks into SST files, which one atomic ingestion then adds;
    from a regular file opened for reading, the helper reads the leaves back
    itself. ``source_fd`` names that file when ``stream`` reads it from its
    start through a wrapper (a :class:`~chain.core.streamio.GrowingFile`
    still being written: its size is then ``size_hint``). Smaller objects go
    through memtables, written by a thread while the next chunk is hashed.
    Either way the blocks are durable before the pin and the metadata are
    written, in one batch. Memory is one chunk, the pending batches and the
    builder's per-level runs.
    """
    params = ChunkParams(chunk_size, max_links)
    store._check_writable()
    source = _file_source(stream) if source_fd is None else (source_fd, 0)
    expected = _expected_size(source, size_hint) if source_fd is None else size_hint or 0
    with store._guard.shared():
        if expected >= HELPER_MIN_BYTES:
            segment = FILE_SEGMENT_BYTES if source is not None else INLINE_SEGMENT_BYTES
            with _HelperSstSink(store, segment, source=source) as helper_sink:
                built: BuildResult = build_file(stream, helper_sink, params)
                paths = helper_sink.close()
                if source is not None and helper_sink.file_bytes != built.size:
                    raise StoreError(f"the leaves cover {helper_sink.file_bytes} bytes of a {built.size}-byte file")
                store._ingest(paths)  # durable on return
        else:
            with _BatchSink(store, batch_bytes) as sink:
                built = build_file(stream, sink, params)
                sink.close()
            store._flush_blocks()  # durable on return, pinned or not
        meta = ObjectMeta(chunk_size, max_links, built.size, built.blocks, built.depth)
        if pin:
            store._add_pin(built.root, meta)
        else:
            with store._meta_lock:
                batch = WriteBatch(raw_mode=False)
                batch.put(_META + built.root.to_bytes(), json.dumps(asdict(meta)).encode())
                store._write(batch)
    return AddResult(built.root, built.size, built.blocks, built.depth, chunk_size, max_links, pin)


def import_car(
    store: BlockStore,
    stream: BinaryIO,
    *,
    pin: bool = True,
    segment_bytes: int | None = None,
    expect_roots: Iterable[CID] | None = None,
    source_fd: int | None = None,
) -> ImportResult:
    """Import a CARv1 stream in one pass: all or nothing.

    Each block is hashed against its CID and its links decoded as it is read,
    then written into a sorted SST file by :class:`_SstSink`'s thread while
    the next ones are read: reading a CAR that is still arriving
    (:class:`~chain.core.streamio.GrowingFile`), hashing and writing all
    overlap, and no byte goes through a memtable or the write-ahead log. With
    ``pin``, every root's DAG must be complete (in the CAR or already in the
    store) before anything enters the store. Then one atomic ingestion adds
    every block (durable on return), and the pins follow. If anything fails
    before the ingestion (a malformed or truncated stream, a block that does
    not match, an incomplete DAG, a failed write), the store is as it was:
    nothing added, nothing deleted, nothing pinned. A crash after it leaves
    only unpinned blocks, which gc removes and no pin or CAR export ever
    reaches. ``expect_roots``: the roots the caller asked for; a CAR naming
    others is refused before any block is read (a peer does not get to choose
    what this node pins).

    ``source_fd``: the CAR's own file, read by ``stream`` from its start (a
    spool file, possibly still growing). A helper process then writes the SST
    files on the other core, reading each block back from that file at the
    offset where this process hashed it (:mod:`.sstwriter`).

    Blocks already stored are written again rather than skipped: a stored
    block is not re-hashed on lookup, and re-importing an object is how a
    damaged copy is repaired.
    """
    store._check_writable()
    reader = CarReader(stream)
    if expect_roots is not None and tuple(reader.roots) != tuple(expect_roots):
        raise CodecError(f"the CAR's roots are {[str(r) for r in reader.roots]}, not the ones asked for")
    links: dict[CID, list[CID]] = {}
    count = total = 0
    with store._guard.shared():
        sink: _SstSink
        if source_fd is None:
            sink = _SstSink(store, segment_bytes or SEGMENT_BYTES)
        else:
            sink = _HelperSstSink(store, segment_bytes or FILE_SEGMENT_BYTES, source=(source_fd, 0))
        with sink:
            for cid, data, offset in reader.with_offsets():
                links[cid] = block_links(cid, data)  # also rejects malformed dag-pb/cbor now
                sink.at(cid, data, offset)
                count += 1
                total += len(data)
            paths = sink.close()
            if pin:
                _check_complete(store, reader.roots, links)
            store._ingest(paths)
        if pin:
            for root in reader.roots:
                store._add_pin(root, None)
    return ImportResult(reader.roots, count, total, pin)


def _check_complete(store: BlockStore, roots: Iterable[CID], links: dict[CID, list[CID]]) -> None:
    seen: set[CID] = set()
    stack = list(roots)
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if cid in links:
            stack.extend(links[cid])
        elif cid.codec == RAW:
            if not store.has(cid):
                raise NotFoundError(f"CAR is incomplete: {cid} is neither in it nor in the store")
        else:
            try:
                stack.extend(block_links(cid, store.get(cid)))
            except NotFoundError:
                raise NotFoundError(f"CAR is incomplete: {cid} is neither in it nor in the store") from None


def export_car(store: BlockStore, out: BinaryIO, roots: Iterable[CID]) -> CarStats:
    """Write the DAGs under ``roots`` as CARv1 (each block verified as it is read, a few ahead of the writer)."""
    return write_car(out, list(roots), store.get, read_ahead=4)
