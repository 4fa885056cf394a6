"""``chain verify``: re-validate the chain from its stored bytes, compare the projection.

What is checked, block by block from genesis, reading only the chain store:

* the height index points at a block of that height whose bytes decode and
  whose header hashes to the CID it is stored under (``block-tampered``), and
  every transaction's bytes hash to the CID the header links;
* everything :func:`chain.core.ledger.validate_block` checks (link, height,
  timestamps, proposer and certificate signatures, merkle root, every
  transaction signature, sequence numbers, the types' validators, the state
  hash) against the state *rebuilt from the blocks*, never the projection;
* the database projection: every ``Block`` and ``Transaction`` row equals the
  row the block gives; every ``LedgerState`` row and every typed-projection row
  equals the rebuilt state, and no row is missing or extra
  (``projection-differs``, naming the table, key and field).

Memory does not grow with the chain: blocks are read one at a time and
compared with the database in windows of bounded size (keyset pagination, no
result set held whole), and the rebuilt state lives in a RocksDB database of
its own in a temporary directory, with a small memtable.

Both cores work. The signatures, most of the cost, are verified in two
processes while this one applies the block before and compares it with the
database (one block is read ahead). Processes, not threads: a verifying thread
beside one that runs Python waits for the GIL after every signature, and
falls to a few hundred a second (see :func:`chain.core.crypto.verify_many`).
The periodic check verifies few blocks at a time and keeps to threads.

``from_height`` re-verifies the blocks from that height; the ones before it
are still replayed and hash-checked (the state has to be rebuilt) but their
signatures are trusted. The periodic check (:func:`chain_validate_recent`)
keeps its rebuilt state between runs (a checkpoint next to the chain store,
written in the same batch as the height it stands at), so each run costs only
the blocks sealed since the last one.
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone
from rocksdict import Options, Rdict, WriteBatch

from chain import chainstore
from chain.core import crypto, dagcbor, ledger, streamio
from chain.core.block import Block as CoreBlock
from chain.core.cid import CID
from chain.core.errors import CodecError, IntegrityError, NotFoundError
from chain.core.reasons import ValidationError
from chain.core.state import StateChange
from chain.core.transaction import Transaction as CoreTx
from chain.ledger_registry import projections, registry
from chain.ledger_services import SIGNATURE_THREADS, block_row_fields, tx_row_fields
from chain.models import Block, LedgerState, Transaction, VerificationRun
from chain.models.ledger import state_key_digest

logger = logging.getLogger(__name__)

TAMPERED = "block-tampered"
MISSING = "block-missing"
PROJECTION = "projection-differs"
WRONG_CHAIN = "wrong-chain"

WINDOW_TXS = 2000
WINDOW_BLOCKS = 256
READ_AHEAD = 1  # blocks waiting, read and their signatures started, beside the one being applied
PAGE = 2000
RECENT_KEY_LIMIT = 50_000
_META = b"\xffmeta"  # not the UTF-8 of any state key
_HEIGHT = struct.Struct(">Q")
_recent_lock = threading.Lock()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    kind: str
    from_height: int
    to_height: int | None
    blocks: int
    transactions: int
    first_bad_height: int | None
    reason: str
    message: str
    started_at: datetime
    finished_at: datetime

    def summary(self) -> str:
        if self.ok:
            if self.to_height is None:
                return "the chain is empty; nothing to verify"
            return (
                f"ok: blocks {self.from_height}..{self.to_height} valid, "
                f"{self.blocks} blocks and {self.transactions} transactions checked, projection matches"
            )
        return f"FAILED at height {self.first_bad_height}: {self.reason}: {self.message}"


@dataclass(order=True)
class Problem:
    height: int
    reason: str = field(compare=False)
    message: str = field(compare=False)


class _Stop(Exception):
    """The chain itself is broken at a height: the replay cannot go on."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem


# -- the rebuilt state ------------------------------------------------------------------------
def _replay_options() -> Options:
    # A small memtable (set on the column family, where RocksDB reads it) keeps RSS
    # flat however many state changes the replay writes.
    opts = Options(raw_mode=False)
    opts.set_write_buffer_size(2 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    return opts


class ReplayState:
    """The state rebuilt from the blocks, in a RocksDB database of its own.

    Values are stored as ``height (8 bytes) ‖ DAG-CBOR``: the height of the
    block that last wrote the key, so a difference can be traced to a block.
    """

    def __init__(self, path: str | Path) -> None:
        opts = _replay_options()
        opts.create_if_missing(True)
        self._db = Rdict(str(path), options=opts, column_families={"default": _replay_options()})

    def close(self) -> None:
        self._db.close()

    def get(self, key: str) -> Any:
        raw = self._db.get(key.encode())
        return None if raw is None else dagcbor.decode(raw[_HEIGHT.size :])

    def entries(self, keys: Sequence[str]) -> list[tuple[int, bytes] | None]:
        raws = self._db.get([key.encode() for key in keys]) if keys else []
        return [None if raw is None else (_HEIGHT.unpack(raw[: _HEIGHT.size])[0], raw[_HEIGHT.size :]) for raw in raws]

    def commit(self, changes: Sequence[StateChange], height: int, *, meta: bytes | None = None) -> None:
        batch = WriteBatch(raw_mode=False)
        prefix = _HEIGHT.pack(height)
        for change in changes:
            if change.value is None:
                batch.delete(change.key.encode())
            else:
                batch.put(change.key.encode(), prefix + dagcbor.encode(change.value))
        if meta is not None:
            batch.put(_META, meta)
        self._db.write(batch)

    def meta(self) -> bytes | None:
        return self._db.get(_META)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, height)`` of every key under ``prefix``, in key order."""
        start = prefix.encode()
        it = self._db.iter()
        try:
            it.seek(start)
            while it.valid():
                key = it.key()
                if key == _META or not key.startswith(start):
                    break
                yield key.decode(), _HEIGHT.unpack(it.value()[: _HEIGHT.size])[0]
                it.next()
        finally:
            del it


# -- the verifier -----------------------------------------------------------------------------------
@dataclass
class _Window:
    blocks: list[tuple[CoreBlock, int, list[CoreTx]]] = field(default_factory=list)
    txs: int = 0

    def add(self, block: CoreBlock, size: int, txs: list[CoreTx]) -> None:
        self.blocks.append((block, size, txs))
        self.txs += len(txs)

    @property
    def full(self) -> bool:
        return self.txs >= WINDOW_TXS or len(self.blocks) >= WINDOW_BLOCKS


def _differs(what: str, name: str, database: Any, chain: Any) -> str:
    return f"{what} {name}: the database has {database!r}, the chain has {chain!r}"


class Verifier:
    def __init__(
        self,
        store: chainstore.ChainStore,
        state: ReplayState,
        *,
        from_height: int = 0,
        start: int = 0,
        parent: CoreBlock | None = None,
        checkpoint: bool = False,
        pool: Executor | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.state = state
        self.from_height = from_height
        self.start = start
        self.parent = parent
        self.checkpoint = checkpoint
        self.problems: list[Problem] = []
        self.difference_count = 0
        self.blocks = 0
        self.txs = 0
        self.touched: set[str] | None = set() if start else None
        self.threads = SIGNATURE_THREADS

    # -- bookkeeping --------------------------------------------------------------------
    def note(self, height: int, reason: str, message: str) -> None:
        self.difference_count += 1
        problem = Problem(height, reason, message)
        if not self.problems or problem < self.problems[0]:
            self.problems = [problem]

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> int | None:
        """Verify up to the store's head; return its height (None: empty chain)."""
        top = self.store.head()
        if top is None:
            count = Block.objects.count()
            if count:
                self.note(0, PROJECTION, f"the database has {count} block rows, the chain store none")
            return None
        head = top[0]
        if self.from_height > head:
            raise ValueError(f"--from {self.from_height} is beyond the head (height {head})")
        window = _Window()
        try:
            for block, size, txs, signatures in streamio.read_ahead(self.checked_blocks(head), READ_AHEAD):
                if signatures is not None:
                    signatures.wait()
                self.check_block(block, txs)
                window.add(block, size, txs)
                if window.full:
                    self.compare_window(window)
                    window = _Window()
        except _Stop as stop:
            self.compare_window(window)
            self.note(stop.problem.height, stop.problem.reason, stop.problem.message)
            self.difference_count -= 1  # the chain failure is not a projection difference
            return head
        self.compare_window(window)
        self.compare_counts(head)
        self.compare_state()
        return head

    def checked_blocks(self, head: int) -> Iterator[tuple[CoreBlock, int, list[CoreTx], ledger.SignatureCheck | None]]:
        """The blocks ``start..head``, read and decoded, their signatures being checked.

        With a pool of processes (:func:`chain_verify`), a block's signatures,
        most of the cost, are verified on the other core while the block
        before it is applied and compared with the database; the caller waits
        for them (the :class:`SignatureCheck`) just before applying it.
        Without one, :func:`ledger.validate_block` verifies them in threads.
        """
        for height in range(self.start, head + 1):
            block, size, txs = self.read_block(height)
            signatures = None
            if height < self.from_height:
                for tx in txs:
                    tx.mark_signature_checked()  # trusted below --from; still hashed and applied
            elif height and self.pool is not None:
                signatures = ledger.start_signature_check(txs, self.pool, parts=self.threads)
            yield block, size, txs, signatures

    def read_block(self, height: int) -> tuple[CoreBlock, int, list[CoreTx]]:
        cid = self.store.cid_at(height)
        if cid is None:
            raise _Stop(Problem(height, MISSING, f"the height index has no block at {height}"))
        raw = self.store.block_bytes(cid)
        if raw is None:
            raise _Stop(Problem(height, MISSING, f"block {cid} is not in the chain store"))
        try:
            block = chainstore.decode_block(cid, raw)
            if block.height != height:
                raise IntegrityError(f"the height index points {height} at a block of height {block.height}")
            txs = self.store.get_txs(block.txs)
        except (IntegrityError, CodecError) as exc:
            raise _Stop(Problem(height, TAMPERED, str(exc))) from None
        except NotFoundError as exc:
            raise _Stop(Problem(height, MISSING, str(exc))) from None
        return block, len(raw), txs

    def check_block(self, block: CoreBlock, txs: list[CoreTx]) -> None:
        height = block.height
        try:
            if height == 0:
                if block.chain_id != settings.CHAIN_ID:
                    raise _Stop(
                        Problem(0, WRONG_CHAIN, f"the store holds chain {block.chain_id!r}, not {settings.CHAIN_ID!r}")
                    )
                result = ledger.validate_genesis(block)
            else:
                assert self.parent is not None  # noqa: S101 - start > 0 always comes with its parent
                result = ledger.validate_block(
                    block, parent=self.parent, txs=txs, state=self.state, registry=registry(), threads=self.threads
                )
        except ValidationError as exc:
            raise _Stop(Problem(height, str(exc.reason), exc.message)) from None
        meta = _HEIGHT.pack(height) + block.cid.to_bytes() if self.checkpoint else None
        self.state.commit(result.changes, height, meta=meta)
        if self.touched is not None:
            self.touched.update(change.key for change in result.changes)
            if len(self.touched) > RECENT_KEY_LIMIT:
                self.touched = None  # so much changed that comparing the whole state is as cheap
        self.parent = block
        self.blocks += 1
        self.txs += len(txs)

    # -- projection ----------------------------------------------------------------------------
    def compare_window(self, window: _Window) -> None:
        if not window.blocks:
            return
        low, high = window.blocks[0][0].height, window.blocks[-1][0].height
        rows = {row.height: row for row in Block.objects.filter(height__gte=low, height__lte=high)}
        tx_rows: dict[int, list[dict[str, Any]]] = {}
        names = ["cid", "index", "type", "signer", "seq", "timestamp", "payload", "size"]
        query = (
            Transaction.objects.filter(block__height__gte=low, block__height__lte=high)
            .order_by("block__height", "index")
            .values("block__height", *names)
        )
        for values in query:
            tx_rows.setdefault(values.pop("block__height"), []).append(values)
        for block, size, txs in window.blocks:
            height = block.height
            row = rows.get(height)
            if row is None:
                self.note(height, PROJECTION, f"block {height} is missing from the database")
                continue
            for name, value in block_row_fields(block, size).items():
                if getattr(row, name) != value:
                    self.note(height, PROJECTION, _differs(f"Block {height}", name, getattr(row, name), value))
                    break
            found = tx_rows.get(height, [])
            if len(found) != len(txs):
                self.note(
                    height,
                    PROJECTION,
                    f"block {height} has {len(txs)} transactions on chain and {len(found)} in the database",
                )
                continue
            for index, (tx, values) in enumerate(zip(txs, found, strict=True)):
                for name, value in tx_row_fields(tx, index).items():
                    if values[name] != value:
                        self.note(height, PROJECTION, _differs(f"Transaction {tx.cid}", name, values[name], value))
                        break

    def compare_counts(self, head: int) -> None:
        if self.start:
            return  # a recent check compares only the blocks it re-verified
        blocks = Block.objects.count()
        if blocks != head + 1:
            extra = Block.objects.filter(height__gt=head).order_by("height").values_list("height", flat=True).first()
            self.note(
                head + 1 if extra is None else extra,
                PROJECTION,
                f"the database has {blocks} block rows, the chain {head + 1} blocks",
            )
        txs = Transaction.objects.count()
        if txs != self.txs:
            self.note(head, PROJECTION, f"the database has {txs} transaction rows, the chain {self.txs}")

    def compare_state(self) -> None:
        if self.touched is not None:
            self._compare_keys(sorted(self.touched))
            return
        matched = 0
        for rows in _pages(LedgerState.objects.values_list("pk", "key_digest", "key", "value", "height")):
            entries = self.state.entries([row[2] for row in rows])
            for (_, digest, key, value, height), entry in zip(rows, entries, strict=True):
                matched += entry is not None
                self._compare_state_row(digest, key, bytes(value), height, entry)
        if sum(1 for _ in self.state.walk()) != matched:
            batch: list[tuple[str, int]] = []
            for item in self.state.walk():
                batch.append(item)
                if len(batch) >= PAGE:
                    self._report_missing_state(batch)
                    batch = []
            self._report_missing_state(batch)
        self._compare_projections()

    def _compare_state_row(
        self, digest: str, key: str, value: bytes, height: int, entry: tuple[int, bytes] | None
    ) -> None:
        if digest != state_key_digest(key):
            self.note(height, PROJECTION, f"LedgerState {key!r}: key_digest does not match the key")
        elif entry is None:
            self.note(height, PROJECTION, f"LedgerState {key!r} is in the database but not in the chain's state")
        elif value != entry[1]:
            self.note(
                entry[0],
                PROJECTION,
                _differs(f"LedgerState {key!r}", "value", _show(value), _show(entry[1]))
                + f" (last written at height {entry[0]})",
            )
        elif height != entry[0]:
            self.note(entry[0], PROJECTION, _differs(f"LedgerState {key!r}", "height", height, entry[0]))

    def _report_missing_state(self, keys: list[tuple[str, int]]) -> None:
        if not keys:
            return
        digests = {state_key_digest(key): (key, height) for key, height in keys}
        present = set(LedgerState.objects.filter(key_digest__in=list(digests)).values_list("key_digest", flat=True))
        for digest, (key, height) in digests.items():
            if digest not in present:
                self.note(height, PROJECTION, f"LedgerState {key!r} is in the chain's state but not in the database")

    def _compare_keys(self, keys: list[str]) -> None:
        """A recent check: compare only the state keys the re-verified blocks wrote."""
        for start in range(0, len(keys), PAGE):
            chunk = keys[start : start + PAGE]
            digests = {state_key_digest(key): key for key in chunk}
            rows = {
                row[0]: row
                for row in LedgerState.objects.filter(key_digest__in=list(digests)).values_list(
                    "key_digest", "key", "value", "height"
                )
            }
            for (digest, key), entry in zip(digests.items(), self.state.entries(chunk), strict=True):
                row = rows.get(digest)
                if row is None:
                    if entry is not None:
                        self.note(
                            entry[0], PROJECTION, f"LedgerState {key!r} is in the chain's state but not in the database"
                        )
                    continue
                self._compare_state_row(digest, row[1], bytes(row[2]), row[3], entry)
        self._compare_projections(keys)

    def _compare_projections(self, keys: list[str] | None = None) -> None:
        for projection in projections():
            model = projection.model
            label = model.__name__
            if keys is not None:
                scoped = [key for key in keys if key.startswith(projection.prefix)]
                pages: Iterator[list[Any]] = (
                    list(model.objects.filter(state_key__in=scoped[i : i + PAGE])) for i in range(0, len(scoped), PAGE)
                )
            else:
                scoped = None
                pages = _pages(model.objects.all(), rows_are_models=True)
            seen = set() if scoped is not None else None
            count = 0
            for rows in pages:
                entries = self.state.entries([row.state_key for row in rows])
                for row, entry in zip(rows, entries, strict=True):
                    count += 1
                    if seen is not None:
                        seen.add(row.state_key)
                    if entry is None:
                        self.note(
                            self.parent.height if self.parent else 0,
                            PROJECTION,
                            f"{label} {row.state_key!r} has no state on chain",
                        )
                        continue
                    expected = projection.fields(row.state_key, dagcbor.decode(entry[1]))
                    for name, value in expected.items():
                        if getattr(row, name) != value:
                            self.note(
                                entry[0],
                                PROJECTION,
                                _differs(f"{label} {row.state_key!r}", name, getattr(row, name), value),
                            )
                            break
            if scoped is not None:
                wanted = [
                    key for key, entry in zip(scoped, self.state.entries(scoped), strict=True) if entry is not None
                ]
                for key in wanted:
                    if key not in seen:
                        self.note(self._height_of(key), PROJECTION, f"{label} has no row for {key!r}")
            else:
                expected_count = sum(1 for _ in self.state.walk(projection.prefix))
                if expected_count != count:
                    self._report_missing_rows(projection, label)

    def _report_missing_rows(self, projection: Any, label: str) -> None:
        batch: list[tuple[str, int]] = []

        def flush() -> None:
            present = set(
                projection.model.objects.filter(state_key__in=[k for k, _ in batch]).values_list("state_key", flat=True)
            )
            for key, height in batch:
                if key not in present:
                    self.note(height, PROJECTION, f"{label} has no row for {key!r}")

        for item in self.state.walk(projection.prefix):
            batch.append(item)
            if len(batch) >= PAGE:
                flush()
                batch = []
        if batch:
            flush()

    def _height_of(self, key: str) -> int:
        entry = self.state.entries([key])[0]
        return entry[0] if entry else 0


def _pages(queryset: Any, *, rows_are_models: bool = False) -> Iterator[list[Any]]:
    """Keyset pagination by primary key: constant memory on every database backend."""
    last = 0
    while True:
        page = list(queryset.filter(pk__gt=last).order_by("pk")[:PAGE])
        if not page:
            return
        yield page
        last = page[-1].pk if rows_are_models else page[-1][0]


def _show(value: bytes) -> Any:
    try:
        return dagcbor.decode(value)
    except CodecError:
        return value


# -- entry points ------------------------------------------------------------------------------------
def _result(verifier: Verifier, head: int | None, *, kind: str, from_height: int, started: datetime) -> VerifyResult:
    first = verifier.first
    message = ""
    if first is not None:
        message = first.message
        if verifier.difference_count > 1:
            message += f" ({verifier.difference_count} differences in all)"
    return VerifyResult(
        ok=first is None,
        kind=kind,
        from_height=from_height,
        to_height=head,
        blocks=verifier.blocks,
        transactions=verifier.txs,
        first_bad_height=first.height if first else None,
        reason=first.reason if first else "",
        message=message,
        started_at=started,
        finished_at=timezone.now(),
    )


def _record(result: VerifyResult) -> None:
    VerificationRun.objects.create(
        kind=result.kind,
        started_at=result.started_at,
        finished_at=result.finished_at,
        from_height=result.from_height,
        to_height=result.to_height,
        blocks=result.blocks,
        transactions=result.transactions,
        ok=result.ok,
        first_bad_height=result.first_bad_height,
        reason=result.reason,
        message=result.message[:2000],
    )
    if not result.ok:
        logger.error("chain verification failed: %s", result.summary())


def chain_verify(
    *, from_height: int = 0, store: chainstore.ChainStore | None = None, record: bool = True
) -> VerifyResult:
    """Re-validate every block from the stored bytes and compare the projection with a rebuild."""
    started = timezone.now()
    private = None
    if store is None:
        if chainstore.holds_primary():
            store = chainstore.primary()
        else:  # a handle of its own that reads past the block cache
            store = private = chainstore.ChainStore(settings.CHAIN_DIR, secondary=True, scan=True)
    tmp = tempfile.mkdtemp(prefix="chain-verify-", dir=settings.TMP_DIR)
    try:
        state = ReplayState(tmp)
        try:
            with crypto.signature_processes(SIGNATURE_THREADS) as pool:
                verifier = Verifier(store, state, from_height=from_height, pool=pool)
                head = verifier.run()
        finally:
            state.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if private is not None:
            private.close()
    result = _result(verifier, head, kind=VerificationRun.Kind.FULL, from_height=from_height, started=started)
    if record:
        _record(result)
    return result


def checkpoint_dir() -> Path:
    chain_dir = Path(settings.CHAIN_DIR)
    return chain_dir.with_name(chain_dir.name + "-verifier")


def chain_validate_recent(*, store: chainstore.ChainStore | None = None) -> VerifyResult | None:
    """Verify the blocks sealed since the last run, continuing from the kept rebuilt state.

    Returns None if another run is in progress in this process.
    """
    if not _recent_lock.acquire(blocking=False):
        return None
    try:
        started = timezone.now()
        store = store or chainstore.reader()
        path = checkpoint_dir()
        state = ReplayState(path)
        try:
            start, parent = _resume(store, state)
            if start and parent is None:  # the checkpoint belongs to another chain: rebuild it
                state.close()
                shutil.rmtree(path, ignore_errors=True)
                state = ReplayState(path)
                start = 0
            verifier = Verifier(store, state, start=start, parent=parent, checkpoint=True)
            head = verifier.run()
        finally:
            state.close()
        result = _result(verifier, head, kind=VerificationRun.Kind.RECENT, from_height=start, started=started)
        _record(result)
        return result
    finally:
        _recent_lock.release()


def _resume(store: chainstore.ChainStore, state: ReplayState) -> tuple[int, CoreBlock | None]:
    """Where the checkpoint stands: (next height, its parent block); (0, None) when fresh."""
    meta = state.meta()
    if meta is None:
        return 0, None
    height = _HEIGHT.unpack(meta[: _HEIGHT.size])[0]
    cid = CID.from_bytes(meta[_HEIGHT.size :])
    if store.cid_at(height) != cid:
        return 1, None
    try:
        return height + 1, store.get_block(cid)
    except (IntegrityError, NotFoundError):
        return 1, None
