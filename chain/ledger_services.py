"""The ledger's write paths: submit, genesis, seal, recover; and its read helpers.

Who calls what (DESIGN section 3):

* :func:`tx_submit` runs anywhere (web, workers, commands), inside the
  caller's ``transaction.atomic`` so a business change and its transaction
  commit together. It validates the transaction as a block would, against the
  projected state plus the signer's pending transactions, and inserts it into
  the mempool (the outbox); a refusal raises :class:`TxRejected` with the
  core's reason code. It never touches RocksDB.
* :func:`chain_seal`, :func:`chain_ensure_genesis` and :func:`chain_recover`
  write the chain store, so only the process holding its primary instance
  runs them: the store worker (or a command when no worker holds it).

Sealing is all-or-nothing. The steps are: read pending (signatures verified on
a second thread while the rows decode); seal the block in memory, applying each
transaction with the checks a validator makes; write block + transactions +
head to RocksDB in one synced batch; then, in one database transaction,
project the block (``Block``, ``Transaction``, ``LedgerState`` and typed
projections) and delete its transactions and the rejected ones from the
mempool. A crash before the RocksDB write leaves everything pending; a crash
after it leaves a block in RocksDB that the database does not show yet, and
:func:`chain_recover`, which runs at the start of every seal, re-validates and
projects exactly those blocks (deleting their mempool rows) before anything
new is sealed. A transaction is therefore sealed exactly once or still
pending, whatever step fails.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import logging
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from chain import chainstore
from chain.cluster import genesis_path, in_consortium
from chain.core import crypto, dagcbor, ledger
from chain.core.block import Block as CoreBlock
from chain.core.car import CarWriter
from chain.core.cid import CID, DAG_CBOR
from chain.core.consortium import Authority, ChainParams, authorities_of, params_of
from chain.core.errors import CodecError
from chain.core.reasons import Reason, ValidationError
from chain.core.state import StateChange, last_seq, seq_key
from chain.core.transaction import Transaction as CoreTx
from chain.core.transaction import now_ms as clock_ms
from chain.ledger_registry import commit_hooks, projections, registry
from chain.models import Block, LedgerState, MempoolEntry, Transaction, VerificationRun
from chain.models.ledger import state_key_digest

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHUNK = 500
# Sealing and recovery of this process's primary store run one at a time
# (the store worker runs tasks in several threads).
_seal_lock = threading.RLock()
# cryptography releases the GIL while OpenSSL verifies: spread a block's signatures over the cores.
SIGNATURE_THREADS = min(4, os.cpu_count() or 1)


class TxRejected(Exception):
    """A transaction the ledger refuses; ``reason`` is a :class:`Reason` code."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        self.reason = str(reason)
        self.message = message
        super().__init__(f"{self.reason}: {message}")


class ChainError(Exception):
    """The chain store and its database projection cannot be reconciled automatically."""


# -- small conversions ------------------------------------------------------------------
def ms_to_datetime(ms: int) -> datetime:
    """Exact (no float) conversion of a chain timestamp."""
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(milliseconds=1)


def to_dag_json(value: Any) -> Any:
    """The DAG-JSON form of a chain value: bytes as ``{"/": {"bytes": b64}}``, CIDs as ``{"/": cid}``."""
    if isinstance(value, bytes):
        return {"/": {"bytes": base64.b64encode(value).decode().rstrip("=")}}
    if isinstance(value, CID):
        return {"/": str(value)}
    if isinstance(value, dict):
        return {key: to_dag_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_dag_json(item) for item in value]
    return value


def configured_params() -> ChainParams:
    """The parameters a new genesis records, from the settings."""
    return ChainParams(
        block_interval_ms=round(settings.CHAIN_BLOCK_INTERVAL * 1000),
        max_block_txs=settings.CHAIN_MAX_BLOCK_TXS,
        max_tx_size=settings.CHAIN_MAX_TX_BYTES,
        membership_rules=2,
    )


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the submit path's statements ----------------------------------------------------------------
# Written out once rather than built by the ORM for every submission (the insert is _insert_rows):
# building the queries cost several times running them (a profile of tx_submit: 90 % ORM, 10 % SQL).
_STATE_VALUES = "SELECT key_digest, value FROM {state} WHERE key_digest IN ({marks})"
_PENDING_TOPS = "SELECT signer, MAX(seq) FROM {mempool} WHERE signer IN ({marks}) GROUP BY signer"


def _sql(statement: str, count: int = 0) -> str:
    quote = connection.ops.quote_name
    return statement.format(
        state=quote(LedgerState._meta.db_table),
        mempool=quote(MempoolEntry._meta.db_table),
        marks=", ".join(["%s"] * count),
    )


def _rows(statement: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of one of the statements above for ``values`` (the ``IN`` list)."""
    if not values:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_sql(statement, len(values)), list(values))
        return cursor.fetchall()


# -- the projected state as the core's State --------------------------------------------------
class DbState:
    """The ``LedgerState`` table seen through the core's ``StateView`` protocol.

    Reads are cached for the life of the object (one submission or one seal),
    and :meth:`prefetch` loads many keys in one query, so sealing a block reads
    the state of all its signers at once instead of one query per transaction.
    Writes never go through here: a validated block's changes are projected by
    :func:`_project_state` inside the seal's database transaction.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def prefetch(self, keys: Iterable[str]) -> None:
        todo = [key for key in set(keys) if key not in self._cache]
        for chunk in _chunks(todo):
            digests = {state_key_digest(key): key for key in chunk}
            found = dict(_rows(_STATE_VALUES, list(digests)))
            for digest, key in digests.items():
                raw = found.get(digest)
                self._cache[key] = None if raw is None else dagcbor.decode(bytes(raw))

    def get(self, key: str) -> Any:
        if key not in self._cache:
            self.prefetch([key])
        return self._cache[key]

    def params(self) -> ChainParams:
        """The chain's parameters (the configured ones before genesis)."""
        return params_of(self) if self.get("chain/params") is not None else configured_params()


# -- projection ---------------------------------------------------------------------------------
def block_row_fields(block: CoreBlock, size: int) -> dict[str, Any]:
    return {
        "height": block.height,
        "cid": str(block.cid),
        "parent_cid": str(block.parent) if block.parent else "",
        "timestamp": ms_to_datetime(block.timestamp),
        "proposer": block.proposer,
        "tx_count": len(block.txs),
        "tx_root": block.tx_root.hex(),
        "state_hash": block.state_hash.hex(),
        "size": size,
        "votes": len(block.certificate),
    }


def tx_row_fields(tx: CoreTx, index: int) -> dict[str, Any]:
    return {
        "cid": str(tx.cid),
        "index": index,
        "type": tx.type,
        "signer": tx.signer.hex(),
        "seq": tx.seq,
        "timestamp": ms_to_datetime(tx.timestamp),
        "payload": to_dag_json(tx.payload),
        "size": tx.size,
    }


def _upsert(model: Any, rows: list[Any], unique: str, update: list[str]) -> None:
    if not rows:
        return
    # MySQL's ON DUPLICATE KEY UPDATE takes no conflict target.
    target = [unique] if connection.features.supports_update_conflicts_with_target else None
    model.objects.bulk_create(
        rows, batch_size=_CHUNK, update_conflicts=True, unique_fields=target, update_fields=update
    )


def _project_state(changes: Sequence[StateChange], height: int) -> None:
    """Write the net effect of ``changes`` into ``LedgerState`` and the typed projections."""
    final: dict[str, Any] = {}
    for change in changes:
        final[change.key] = change.value
    rows = [
        LedgerState(key_digest=state_key_digest(key), key=key, value=dagcbor.encode(value), height=height)
        for key, value in final.items()
        if value is not None
    ]
    # The digest names the key, so a conflict on it is the same key: only the value and height change.
    # Setting the key again would make SQLite rewrite its index entry (8.6 µs a row, measured).
    _upsert(LedgerState, rows, "key_digest", ["value", "height"])
    gone = [state_key_digest(key) for key, value in final.items() if value is None]
    for chunk in _chunks(gone):
        LedgerState.objects.filter(key_digest__in=chunk).delete()
    for projection in projections():
        keys = [key for key in final if key.startswith(projection.prefix)]
        if not keys:
            continue
        typed, update = [], []
        for key in keys:
            if final[key] is not None:
                fields = projection.fields(key, final[key])
                update = list(fields)
                typed.append(projection.model(state_key=key, **fields))
        _upsert(projection.model, typed, "state_key", update)
        removed = [key for key in keys if final[key] is None]
        for chunk in _chunks(removed):
            projection.model.objects.filter(state_key__in=chunk).delete()
    for prefixes, hook in commit_hooks():
        changed = [key for key in final if key.startswith(prefixes)]
        if changed:
            transaction.on_commit(functools.partial(_run_commit_hook, hook, changed))


def _id_spans(ids: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """``ids`` as the inclusive spans of two or more consecutive ids, and the ids left alone.

    A seal deletes a block's mempool rows, which were read in id order and
    are mostly consecutive. A span is two parameters however long it is;
    an ``IN`` list of 5,000 ids costs Django more to build than the
    database spends deleting the rows.
    """
    spans: list[tuple[int, int]] = []
    single: list[int] = []
    ordered = sorted(set(ids))
    start = 0
    for end in range(1, len(ordered) + 1):
        if end == len(ordered) or ordered[end] != ordered[end - 1] + 1:
            if end - start > 1:
                spans.append((ordered[start], ordered[end - 1]))
            else:
                single.append(ordered[start])
            start = end
    return spans, single


def _run_commit_hook(hook: Callable[[list[str]], None], keys: list[str]) -> None:
    try:
        hook(keys)
    except Exception:
        logger.exception("a commit hook failed for %d state keys", len(keys))


def _delete_mempool(*, ids: Sequence[int] = (), cids: Sequence[str] = ()) -> None:
    spans, single = _id_spans(ids)
    for chunk in _chunks(spans, 200):
        MempoolEntry.objects.filter(functools.reduce(operator.or_, (Q(pk__range=span) for span in chunk))).delete()
    for chunk in _chunks(single, 2000):
        MempoolEntry.objects.filter(pk__in=chunk).delete()
    for chunk in _chunks(list(cids), 2000):
        MempoolEntry.objects.filter(cid__in=chunk).delete()


@transaction.atomic
def _commit_block(result: ledger.BlockResult, size: int, *, mempool_ids: Sequence[int] | None = None) -> Block:
    """Project one validated, stored block and clear its mempool rows, in one transaction.

    ``mempool_ids`` are the rows the seal read (its transactions and those it
    dropped); without them (recovery) the block's transactions are found by CID.
    """
    block = result.block
    row = Block.objects.create(**block_row_fields(block, size))
    tx_rows = [{"block": row.pk, **tx_row_fields(tx, index)} for index, tx in enumerate(result.txs)]
    _insert_rows(Transaction, tx_rows)
    _project_state(result.changes, block.height)
    _checked_txs.forget(result.txs)  # a rollback only costs the next seal a decoding
    if mempool_ids is None:
        _delete_mempool(cids=[tx_row["cid"] for tx_row in tx_rows])
    else:
        _delete_mempool(ids=mempool_ids)
    return row


_PLAIN_FIELDS = (models.CharField, models.IntegerField, models.ForeignKey)


def _adapter(field: models.Field) -> Callable[[Any], Any] | None:
    """How ``field`` turns a Python value into the backend's, without the ORM's generic layers; None: as it is.

    Text and integer columns take the value as it is. An aware datetime and
    a JSON value go straight to the backend's own adaptation, the last step
    of ``get_db_prep_save``; the steps before it change neither (half the
    time a row, measured). Any other field takes ``get_db_prep_save``.
    """
    if isinstance(field, _PLAIN_FIELDS):
        return None
    if isinstance(field, models.DateTimeField):
        return functools.partial(_aware_datetime, adapt=connection.ops.adapt_datetimefield_value)
    if isinstance(field, models.JSONField):
        return functools.partial(connection.ops.adapt_json_value, encoder=field.encoder)
    return functools.partial(field.get_db_prep_save, connection=connection)


def _aware_datetime(value: datetime, *, adapt: Callable[[datetime], Any]) -> Any:
    if timezone.is_naive(value):
        raise ValueError(f"a naive datetime cannot be stored: {value!r}")
    return adapt(value)


def _insert_rows(model: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` with one ``executemany`` and no model instances.

    The seal's hot path: for a 5,000-transaction block ``bulk_create`` spends
    more time building instances and SQL than the database spends inserting.
    Values still go through each field's ``get_db_prep_save``, so they are
    adapted exactly as the ORM would adapt them on every backend.
    """
    if not rows:
        return
    fields = [model._meta.get_field(name) for name in rows[0]]
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608 - identifiers come from the model
        quote(model._meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
    )
    adapt = [_adapter(field) for field in fields]
    pairs = list(zip(fields, adapt, strict=True))
    params = [[row[f.name] if prep is None else prep(row[f.name]) for f, prep in pairs] for row in rows]
    with connection.cursor() as cursor:
        for chunk in _chunks(params, 1000):
            cursor.executemany(sql, chunk)


# -- submission ----------------------------------------------------------------------------------
def next_seq(signer: bytes, *, state: DbState | None = None) -> int:
    """The sequence number ``signer``'s next transaction must carry.

    One past the highest of the committed number and the signer's pending
    transactions. The pending number is read first: a seal that commits
    between the two reads has then already moved it into the state (one
    database transaction), so no number is handed out twice.
    """
    pending = _pending_seqs([signer]).get(signer, 0)
    committed = last_seq(state or DbState(), signer)
    return max(pending, committed) + 1


def tx_submit(tx: CoreTx | bytes, *, now_ms: int | None = None) -> MempoolEntry:
    """Validate ``tx`` as a block would and queue it in the mempool.

    Call it inside the transaction that makes the change it records. Raises
    :class:`TxRejected` (reason ``oversize``, ``bad-encoding``,
    ``wrong-chain``, ``bad-signature``, ``replay``, ``bad-seq``,
    ``unknown-type``, ``invalid-payload``, ``rejected``, ``bad-timestamp``).
    The type's validator sees the committed state; a transaction that a
    pending one makes invalid is refused when the block is sealed, and
    dropped with a logged reason.
    """
    if connection.in_atomic_block:
        (outcome,) = tx_submit_many([tx], now_ms=now_ms)
    else:  # nothing else to commit with it: it may share a commit with other threads' submissions
        outcome = _group_commit.submit(tx, now_ms)
    if isinstance(outcome, TxRejected):
        raise outcome
    return outcome


class _Submission:
    def __init__(self, tx: CoreTx | bytes, now_ms: int | None) -> None:
        self.tx, self.now_ms = tx, now_ms
        self.outcome: MempoolEntry | TxRejected | BaseException | None = None
        self.leads = False  # handed the lead by the thread before
        self.done = threading.Event()


class _GroupCommit:
    """Submissions made outside any database transaction, checked and committed together.

    A thread that finds no commit under way leads: it takes every submission
    queued meanwhile (its own first), checks them as one batch
    (:func:`tx_submit_many`: each transaction as fully as alone) in one
    database transaction, and hands each its outcome once committed; then it
    hands the lead to the oldest submission that arrived meanwhile, so no
    thread works for the others for long. Nothing is acknowledged before the
    commit that holds it; a failed commit fails every submission of its batch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Submission] = []
        self._leading = False

    def submit(self, tx: CoreTx | bytes, now_ms: int | None) -> MempoolEntry | TxRejected:
        mine = _Submission(tx, now_ms)
        with self._lock:
            self._queue.append(mine)
            mine.leads = not self._leading
            self._leading = True
        if not mine.leads:
            mine.done.wait()
        if mine.leads:
            self._lead()
        outcome = mine.outcome
        if isinstance(outcome, BaseException) and not isinstance(outcome, TxRejected):
            raise outcome
        return cast(MempoolEntry | TxRejected, outcome)

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for submission in batch:
                submission.done.set()

    @staticmethod
    def _commit(batch: list[_Submission]) -> None:
        # Checked outside the write transaction (which another process may hold): only the insert takes it,
        # and the unique (signer, seq) refuses what a concurrent submission took meanwhile.
        for now_ms in dict.fromkeys(s.now_ms for s in batch):  # one clock per batch, as tx_submit_many
            same = [s for s in batch if s.now_ms == now_ms]
            try:
                outcomes = tx_submit_many([s.tx for s in same], now_ms=now_ms)
            except BaseException as exc:  # the insert failed: nothing of these was written, nor of later ones
                for submission in batch:
                    if submission.outcome is None:
                        submission.outcome = exc
                raise
            for submission, outcome in zip(same, outcomes, strict=True):
                submission.outcome = outcome


_group_commit = _GroupCommit()


def tx_submit_many(txs: Sequence[CoreTx | bytes], *, now_ms: int | None = None) -> list[MempoolEntry | TxRejected]:
    """:func:`tx_submit` for a batch: one outcome per transaction, in order, each checked as fully.

    The batch path a node takes for many transactions at once (what peers
    relay, its own bulk submissions): the signatures are verified together
    over the cores, the state and the pending sequence numbers of all signers
    are read in one query each, and the accepted rows are inserted together.
    A signer's transactions are accepted in sequence order within the batch.
    A refused transaction writes nothing and does not stop the others.
    """
    state = DbState()
    params = state.params()
    now = clock_ms() if now_ms is None else now_ms
    outcomes: list[MempoolEntry | TxRejected | None] = []
    decoded: list[CoreTx] = []
    for item in txs:
        if isinstance(item, CoreTx):
            decoded.append(item)
            outcomes.append(None)
            continue
        try:
            decoded.append(_checked_txs.decode(bytes(item), max_size=params.max_tx_size))
            outcomes.append(None)
        except ValidationError as exc:
            outcomes.append(TxRejected(exc.reason, exc.message))
    ledger.verify_signatures(decoded, threads=SIGNATURE_THREADS)  # failures are reported by the checks below
    signers = {tx.signer for tx in decoded}
    pending = _pending_seqs(signers)  # pending first, then committed: the order next_seq explains
    state.prefetch(seq_key(signer) for signer in signers)
    expected: dict[bytes, int] = {}
    entries: list[MempoolEntry] = []
    txs_left = iter(decoded)
    for index, outcome in enumerate(outcomes):
        if outcome is not None:
            continue
        tx = next(txs_left)
        if tx.signer not in expected:
            expected[tx.signer] = max(pending.get(tx.signer, 0), last_seq(state, tx.signer)) + 1
        try:
            ledger.check_transaction(
                tx,
                state=state,
                registry=registry(),
                params=params,
                chain_id=settings.CHAIN_ID,
                now_ms=now,
                next_seq=expected[tx.signer],
            )
        except ValidationError as exc:
            outcomes[index] = TxRejected(exc.reason, exc.message)
            continue
        expected[tx.signer] = tx.seq + 1  # a pending transaction submitted again is refused by its number
        entry = MempoolEntry(
            cid=str(tx.cid), raw=tx.encoded, type=tx.type, signer=tx.signer.hex(), seq=tx.seq, size=tx.size
        )
        entries.append(entry)
        outcomes[index] = entry
    _insert_entries(entries, outcomes)
    accepted = {entry.cid for entry in outcomes if isinstance(entry, MempoolEntry)}
    _checked_txs.remember(tx for tx in decoded if str(tx.cid) in accepted)  # never what was refused
    return [outcome for outcome in outcomes if outcome is not None]


class _CheckedTxs:
    """Transactions this process decoded and whose signatures verified, by their CID's digest.

    A consortium node decodes and verifies what a peer relays; the same bytes
    come back in a proposal, then in the decided block. The digest of the
    bytes names them exactly, signature included, so the object decoded and
    verified once serves again. Bounded, oldest out; thread-safe (the peer
    server's threads fill it, the consensus loop reads it).
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[bytes, CoreTx] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, txs: Iterable[CoreTx]) -> None:
        """Keep accepted, verified transactions (bounded by their encoded size, oldest out)."""
        with self._lock:
            for tx in txs:
                if tx.signature_checked and tx.cid.digest not in self._items:
                    self._items[tx.cid.digest] = tx
                    self._bytes += tx.size
            while self._bytes > self._max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.size

    def forget(self, txs: Iterable[CoreTx]) -> None:
        """Drop ``txs``: they are in a committed block, and no block will decode them again.

        Kept, a drained backlog would hold a block's worth of objects after
        another until the byte bound, and every full garbage collection would
        walk them all (docs/performance.md).
        """
        with self._lock:
            for tx in txs:
                known = self._items.pop(tx.cid.digest, None)
                if known is not None:
                    self._bytes -= known.size

    def decode(self, raw: bytes, *, max_size: int) -> CoreTx:
        """:meth:`CoreTx.decode`, or the verified object these very bytes decoded to before."""
        if len(raw) <= max_size:
            digest = hashlib.sha256(raw).digest()
            with self._lock:
                known = self._items.get(digest)
            if known is not None:
                return known
        return CoreTx.decode(raw, max_size=max_size)


_checked_txs = _CheckedTxs()


def _pending_seqs(signers: Iterable[bytes]) -> dict[bytes, int]:
    """The highest pending sequence number of each of ``signers`` that has one."""
    tops: dict[bytes, int] = {}
    for chunk in _chunks([signer.hex() for signer in signers]):
        tops.update((bytes.fromhex(signer), top) for signer, top in _rows(_PENDING_TOPS, chunk))
    return tops


def _pending_cids(cids: Sequence[str]) -> set[str]:
    """Those of ``cids`` that this node's mempool holds."""
    held: set[str] = set()
    for chunk in _chunks(cids):
        held.update(MempoolEntry.objects.filter(cid__in=chunk).values_list("cid", flat=True))
    return held


def _submit_turn_path(db: Any = connection) -> str | None:
    """The file whose lock orders the submitters of ``db``, when it is an SQLite file and no transaction is open.

    None on MySQL/MariaDB (row locks, no database-wide write lock), for an
    in-memory database (one process), and inside a transaction the caller
    holds: it may already hold SQLite's write lock, which a process waiting
    here would need.
    """
    if db.vendor != "sqlite" or db.in_atomic_block:
        return None
    name = os.fspath(db.settings_dict.get("NAME") or "")
    return name + ".submit-turn" if os.path.isabs(name) else None


@contextlib.contextmanager
def _write_turn(path: str | None) -> Iterator[None]:
    """Hold the lock on ``path`` (nothing when None): one holder at a time, across threads and processes.

    SQLite's own busy handler polls: a writer that finds the write lock taken
    sleeps 1, 2, 5, 10 ms and more between tries, so behind another process's
    commit of a fraction of a millisecond it idles for milliseconds. A
    submitter takes this file lock first, which the kernel hands to the next
    waiter the moment it is released, or its holder dies. Each call opens the
    file anew, so two threads of one process exclude each other too.
    Other writers (a seal, a record's save) still meet SQLite's busy timeout.
    """
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        yield
    finally:
        os.close(fd)


def _insert_entries(entries: list[MempoolEntry], outcomes: list[Any]) -> None:
    """Insert accepted rows together; one that a concurrent submission beat becomes a refusal in ``outcomes``."""
    if not entries:
        return
    now = timezone.now()
    for entry in entries:
        entry.submitted_at = now
    columns = ("cid", "raw", "type", "signer", "seq", "size", "submitted_at")
    rows = [{name: getattr(entry, name) for name in columns} for entry in entries]
    try:
        # Its own transaction when called outside one (the group commit): taken in turn with other processes.
        with _write_turn(_submit_turn_path()), transaction.atomic():  # else a savepoint the caller survives
            _insert_rows(MempoolEntry, rows)
        return
    except IntegrityError:
        pass
    for entry in entries:  # someone else took a (signer, seq) or a CID meanwhile: find which, one by one
        try:
            with transaction.atomic():
                entry.save(force_insert=True)
        except IntegrityError:
            outcomes[outcomes.index(entry)] = TxRejected(
                Reason.REPLAY, f"another transaction of this signer with sequence number {entry.seq} is pending"
            )


def tx_sign_and_submit(
    *, private_key: bytes, type: str, payload: dict[str, Any], now_ms: int | None = None
) -> MempoolEntry:
    """Sign a transaction with the next sequence number of ``private_key`` and submit it.

    Two processes signing for the same key at once may pick the same number;
    the loser gets a fresh number and tries again.
    """
    signer = crypto.ed25519_public(private_key)
    for attempt in range(3):
        tx = CoreTx.create(
            chain_id=settings.CHAIN_ID,
            type=type,
            payload=payload,
            seq=next_seq(signer),
            private_key=private_key,
            timestamp=now_ms,
        )
        try:
            return tx_submit(tx, now_ms=now_ms)
        except TxRejected as exc:
            if exc.reason != Reason.REPLAY or attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# -- genesis, recovery, sealing (primary store only) ----------------------------------------------
@dataclass(frozen=True)
class SealOutcome:
    height: int | None  # the new block's height; None when nothing was sealed
    cid: str | None
    included: int
    rejected: int
    deferred: int
    recovered: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "cid": self.cid,
            "included": self.included,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "recovered": self.recovered,
        }


def _node_key() -> bytes:
    from chain.services import node_identity, node_signing_key

    return node_signing_key(node_identity())


def chain_recover(*, store: chainstore.ChainStore | None = None) -> int:
    """Project the blocks the chain store holds and the database does not; return how many.

    They are the blocks of seals that stopped between the RocksDB write and
    the database commit. Each is re-validated against the projected state
    before it is projected, exactly as a block from a peer would be.
    """
    store = store or chainstore.primary()
    with _seal_lock:
        top = store.head()
        db_top = Block.objects.order_by("-height").values_list("height", "cid").first()
        if top is None:
            if db_top is not None:
                raise ChainError(
                    f"the database shows blocks up to height {db_top[0]} but the chain store at "
                    f"{store.path} is empty; restore the chain store, or rebuild the node"
                )
            return 0
        height = top[0]
        start = 0
        if db_top is not None:
            db_height, db_cid = db_top
            if db_height > height:
                raise ChainError(
                    f"the database projection (height {db_height}) is ahead of the chain store (height {height})"
                )
            stored = store.cid_at(db_height)
            if stored is None or str(stored) != db_cid:
                raise ChainError(f"the database projection and the chain store disagree at height {db_height}")
            start = db_height + 1
        if start > height:
            return 0  # the usual case: the projection is at the store's head
        parent = store.block_at(start - 1) if start else None
        for h in range(start, height + 1):
            block = store.block_at(h)
            if parent is None:
                result = ledger.validate_genesis(block)
            else:
                result = ledger.validate_block(
                    block,
                    parent=parent,
                    txs=store.get_txs(block.txs),
                    state=DbState(),
                    registry=registry(),
                    now_ms=max(clock_ms(), block.timestamp),  # our own block; a clock set back must not block it
                )
            _commit_block(result, len(block.encode()))
            logger.warning("recovered block %s (%s) into the database projection", h, block.cid)
            parent = block
        return height - start + 1


_head_cache: dict[str, CoreBlock] = {}


def _head_block(store: chainstore.ChainStore) -> CoreBlock | None:
    top = store.head()
    if top is None:
        return None
    cached = _head_cache.get(store.path)
    if cached is not None and cached.cid == top[1]:
        return cached
    block = store.get_block(top[1])
    _head_cache[store.path] = block
    return block


def chain_ensure_genesis(*, store: chainstore.ChainStore | None = None) -> CoreBlock:
    """The head block, making block 0 first if the chain is new.

    Genesis records the chain id, this node as the only authority and the
    configured parameters, signed by the node key.
    """
    return _ensure_genesis(store or chainstore.primary())[0]


def _ensure_genesis(store: chainstore.ChainStore) -> tuple[CoreBlock, int]:
    """The head block (made if the chain is new) and how many blocks recovery projected."""
    with _seal_lock:
        recovered = chain_recover(store=store)
        head = _head_block(store)
        if head is not None:
            return head, recovered
        founded = genesis_path()
        if founded.exists():  # a consortium's block 0, signed by every founding authority
            genesis = CoreBlock.decode(founded.read_bytes())
            if genesis.chain_id != settings.CHAIN_ID:
                raise ChainError(f"{founded} is for chain {genesis.chain_id!r}, not {settings.CHAIN_ID!r}")
            result = ledger.validate_genesis(genesis)
            _commit_block(result, store.write_block(genesis, []))
            logger.info("wrote the consortium's genesis block %s", genesis.cid)
            return genesis, recovered
        node_key = _node_key()
        genesis = ledger.make_genesis(
            chain_id=settings.CHAIN_ID,
            authorities=[Authority(settings.NODE_ID, crypto.ed25519_public(node_key))],
            timestamp=clock_ms(),
            params=configured_params(),
        )
        genesis = genesis.with_votes([genesis.vote(settings.NODE_ID, node_key)])
        result = ledger.validate_genesis(genesis)
        size = store.write_block(genesis, [])
        _commit_block(result, size)
        logger.info("made genesis block %s for chain %s", genesis.cid, settings.CHAIN_ID)
        return genesis, recovered


@dataclass(frozen=True)
class _Pending:
    txs: list[CoreTx]
    ids: dict[CoreTx, int]  # the mempool row of each transaction
    undecodable: list[tuple[int, str, str]]  # (row id, cid, reason)
    last_id: int  # the newest row read; 0 when none
    more: bool  # the mempool may hold rows after it


class _ReadAhead:
    """Signatures verified in other processes while this process seals: this block's, then the next one's.

    When the mempool holds more than a block, :func:`chain_seal`, right after
    reading one block's rows, starts in :func:`_signature_pool` the checks
    of the signatures they carry that are not verified yet (a backlog's
    first block: later ones were read ahead). Then, while those run, it
    decodes the rows the next seal will read (those it read beyond a block,
    then the rows after them, up to a block) and starts their checks too.
    It waits for its own block's checks (:meth:`wait_current`) and seals;
    the processes verify the next block meanwhile. The next seal first waits
    for them (:meth:`finish`); those that verified join :data:`_checked_txs`,
    where its decoding of the same bytes finds them.

    Nothing here decides anything: a verdict only saves a seal a
    verification, and if the processes fail, the seal verifies in threads.
    """

    def __init__(self, pending: _Pending, limit: int, max_size: int) -> None:
        self.current = self._start(pending.txs[:limit])
        self.checks = self._start(pending.txs[limit:])
        if not pending.more:
            return
        rows = MempoolEntry.objects.filter(id__gt=pending.last_id).order_by("id").values_list("raw", flat=True)
        batch: list[CoreTx] = []
        for raw in rows[:limit].iterator(chunk_size=_CHUNK):
            with contextlib.suppress(ValidationError):  # the seal that reads it drops it, and says why
                batch.append(_checked_txs.decode(bytes(raw), max_size=max_size))
            if len(batch) >= _CHUNK:
                self.checks += self._start(batch)
                batch = []
        self.checks += self._start(batch)

    @staticmethod
    def _start(txs: Sequence[CoreTx]) -> list[ledger.SignatureCheck]:
        todo = [tx for tx in txs if not tx.signature_checked]
        return [ledger.start_signature_check(chunk, _signature_pool(), parts=1) for chunk in _chunks(todo)]

    def wait_current(self) -> None:
        """Wait for this block's checks; on a failure the seal verifies what they did not."""
        self._wait(self.current)

    def finish(self) -> None:
        """Wait for the next block's checks and remember what verified."""
        self._wait(self.checks)
        _checked_txs.remember(tx for check in self.checks for tx in check.txs if tx.signature_checked)

    @staticmethod
    def _wait(checks: list[ledger.SignatureCheck]) -> None:
        try:
            for check in checks:
                check.wait()
        except Exception:  # a broken pool costs only speed: the seal verifies itself
            logger.warning("the signature processes failed; the seal verifies in threads", exc_info=True)
            _reset_signature_pool()


_read_ahead: _ReadAhead | None = None  # under _seal_lock
_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _signature_pool() -> ProcessPoolExecutor:
    """This process's signature processes, started the first time the mempool holds more than a block."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = crypto.signature_processes(SIGNATURE_THREADS)
        return _pool


def _reset_signature_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _finish_read_ahead() -> None:
    global _read_ahead
    if _read_ahead is not None:
        ahead, _read_ahead = _read_ahead, None
        ahead.finish()


def _start_read_ahead(pending: _Pending, params: ChainParams) -> _ReadAhead | None:
    global _read_ahead
    if len(pending.txs) <= params.max_block_txs and not pending.more:
        return None  # one block at most: the seal verifies it in threads, with no processes to start
    try:
        _read_ahead = _ReadAhead(pending, params.max_block_txs, params.max_tx_size)
    except Exception:  # never at the cost of the block being sealed: the seal verifies itself
        logger.warning("could not start the signature processes; the seal verifies in threads", exc_info=True)
        _reset_signature_pool()
    return _read_ahead


def _load_pending(limit: int, max_size: int) -> _Pending:
    """Decode the oldest pending rows (signatures are checked by the seal, over both cores).

    Decoding is Python and holds the GIL; a thread verifying beside it would wait
    for the GIL after every signature (a few milliseconds each time), so the
    two are not overlapped: all rows decode, then ``ledger.seal_block``
    verifies them with :data:`SIGNATURE_THREADS` threads that each spend
    nearly all their time in OpenSSL, without the GIL. After a full block,
    the previous seal had them verified in other processes (:class:`_ReadAhead`),
    and decoding finds them checked.
    """
    _finish_read_ahead()
    rows = MempoolEntry.objects.order_by("id").values_list("id", "cid", "raw")[:limit]
    txs, ids, bad = [], {}, []
    count = last_id = 0
    for pk, cid, raw in rows:
        count, last_id = count + 1, pk
        try:
            tx = _checked_txs.decode(bytes(raw), max_size=max_size)
        except ValidationError as exc:
            bad.append((pk, cid, f"{exc.reason}: {exc.message}"))
            continue
        if tx in ids:
            bad.append((pk, cid, "the same transaction is queued twice"))
            continue
        txs.append(tx)
        ids[tx] = pk
    return _Pending(txs, ids, bad, last_id, more=count == limit)


def _orphans(deferred: Sequence[CoreTx], committed: dict[bytes, int], dropping: set[int]) -> list[CoreTx]:
    """Deferred transactions whose missing predecessor can never arrive.

    A transaction waits when an earlier number of its signer is not sealed
    yet. If that earlier one was refused, the later ones can never be valid:
    submission hands out numbers after the highest pending one, so the gap is
    never refilled. They are dropped rather than left to clog the mempool.
    """
    waiting = [tx for tx in deferred if tx.seq > committed[tx.signer] + 1]
    if not waiting:
        return []
    signers = sorted({tx.signer.hex() for tx in waiting})
    pending = {
        (signer, seq)
        for pk, signer, seq in MempoolEntry.objects.filter(signer__in=signers).values_list("id", "signer", "seq")
        if pk not in dropping
    }
    return [
        tx
        for tx in waiting
        if any((tx.signer.hex(), seq) not in pending for seq in range(committed[tx.signer] + 1, tx.seq))
    ]


def _refused(pending: _Pending, sealed: ledger.SealResult, state: DbState) -> tuple[list[tuple[int, str, str]], int]:
    """The pending rows a seal found can never be valid (row id, CID, reason), logged; and how many wait."""
    committed = {tx.signer: last_seq(state, tx.signer) for tx in pending.txs}
    for tx in sealed.result.txs:
        committed[tx.signer] = tx.seq
    dropped = list(pending.undecodable)
    dropped += [(pending.ids[r.tx], str(r.tx.cid), f"{r.error.reason}: {r.error.message}") for r in sealed.rejected]
    orphans = _orphans(sealed.deferred, committed, {pk for pk, _, _ in dropped})
    refused = f"{Reason.BAD_SEQ}: an earlier transaction of this signer was refused"
    dropped += [(pending.ids[tx], str(tx.cid), refused) for tx in orphans]
    for _, cid, reason in dropped:
        logger.warning("dropped pending transaction %s: %s", cid, reason)
    return dropped, len(sealed.deferred) - len(orphans)


def chain_seal(*, now_ms: int | None = None, store: chainstore.ChainStore | None = None) -> SealOutcome:
    """Seal what is pending into one block, validate it, store it and project it.

    Idempotent and safe to call at any time by the primary's holder: with
    nothing pending it only checks that the projection is complete.
    """
    if in_consortium():
        raise ChainError("this node is one of a consortium: its blocks are decided by consensus, not sealed alone")
    store = store or chainstore.primary()
    with _seal_lock:
        head, recovered = _ensure_genesis(store)
        state = DbState()
        params = state.params()
        pending = _load_pending(params.max_block_txs + 256, params.max_tx_size)
        if not pending.txs and not pending.undecodable:
            return SealOutcome(None, None, 0, 0, 0, recovered)
        ahead = _start_read_ahead(pending, params)
        signers = {tx.signer for tx in pending.txs}
        state.prefetch([seq_key(signer) for signer in signers])
        if ahead is not None:
            ahead.wait_current()
        sealed = ledger.seal_block(
            parent=head,
            pending=pending.txs,
            state=state,
            registry=registry(),
            node_id=settings.NODE_ID,
            node_key=_node_key(),
            now_ms=now_ms,
            threads=SIGNATURE_THREADS,
        )
        _checked_txs.remember(sealed.deferred)  # verified for this block, read again by the next seal
        included = sealed.result.txs
        dropped, deferred = _refused(pending, sealed, state)
        drop_ids = [pk for pk, _, _ in dropped]
        if not included:
            _delete_mempool(ids=drop_ids)
            return SealOutcome(None, None, 0, len(dropped), deferred, recovered)
        # The sealer applied every transaction with the validator's own checks
        # (ledger.apply_transaction) on this very state: validating the block
        # again here would run the same code on the same inputs.
        size = store.write_block(sealed.block, included)
        _commit_block(sealed.result, size, mempool_ids=[pending.ids[tx] for tx in included] + drop_ids)
        _head_cache[store.path] = sealed.block
        return SealOutcome(
            sealed.block.height,
            str(sealed.block.cid),
            len(included),
            len(dropped),
            deferred,
            recovered,
        )


# -- reads ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainStatus:
    height: int | None
    head_cid: str | None
    head_time: datetime | None
    pending: int
    last_verification: VerificationRun | None


def chain_status() -> ChainStatus:
    """What the database projection says about the chain (three queries)."""
    head = Block.objects.order_by("-height").only("height", "cid", "timestamp").first()
    return ChainStatus(
        height=head.height if head else None,
        head_cid=head.cid if head else None,
        head_time=head.timestamp if head else None,
        pending=MempoolEntry.objects.count(),
        last_verification=VerificationRun.objects.order_by("-finished_at", "-id").first(),
    )


def chain_export_car(*, start: int, end: int, out: BinaryIO, store: chainstore.ChainStore | None = None) -> int:
    """Write blocks ``start``..``end`` with their transactions and certificates as a CARv1.

    The root is block ``end``. Sections follow ``ipfs dag export`` order from
    it: each header, then the transactions it links, then (not linked from the
    header, whose CID excludes it) its certificate, then the parent header.
    Every byte comes from the store and is checked on the way. Returns the
    number of sections written.
    """
    store = store or chainstore.reader()
    if start < 0 or end < start:
        raise ValueError("export needs 0 <= FROM <= TO")
    root = store.cid_at(end)
    if root is None:
        raise ValueError(f"there is no block at height {end}")
    writer = CarWriter(out, [root])
    for height in range(end, start - 1, -1):
        block = store.block_at(height)
        writer.write_block(block.cid, block.header_bytes)
        for tx in store.get_txs(block.txs):
            writer.write_block(tx.cid, tx.encoded)
        certificate = block.certificate_bytes()
        writer.write_block(CID.of(DAG_CBOR, certificate), certificate)
    return writer.blocks


# -- consensus (a node of a consortium; the consensus process holds the primary store) -----------------
@dataclass(frozen=True)
class Proposed:
    """A block this node proposes: the block, its transactions, and the value's bytes on the wire."""

    block: CoreBlock
    txs: list[CoreTx]
    value: bytes
    checked: ledger.BlockResult  # its changes on top of the head it was built on


def encode_value(block: CoreBlock, txs: Sequence[CoreTx]) -> bytes:
    """A proposed value as it travels: the block and its transactions' bytes, in order."""
    return dagcbor.encode({"block": block.encode(), "txs": [tx.encoded for tx in txs]})


def decode_value(data: bytes, *, max_tx_size: int) -> tuple[CoreBlock, list[CoreTx]]:
    """Parse :func:`encode_value`; :class:`ValidationError` (``bad-encoding``) for anything else."""
    try:
        value = dagcbor.decode(data)
    except CodecError as exc:
        raise ValidationError(Reason.BAD_ENCODING, f"value: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"block", "txs"} or not isinstance(value["txs"], list):
        raise ValidationError(Reason.BAD_ENCODING, "a value is a map {block, txs}")
    if not isinstance(value["block"], bytes) or not all(isinstance(t, bytes) for t in value["txs"]):
        raise ValidationError(Reason.BAD_ENCODING, "a value holds bytes")
    return CoreBlock.decode(value["block"]), [_checked_txs.decode(t, max_size=max_tx_size) for t in value["txs"]]


def chain_head(*, store: chainstore.ChainStore | None = None) -> CoreBlock:
    """The head block of this node's chain store (genesis written first if the chain is new)."""
    return _ensure_genesis(store or chainstore.primary())[0]


def chain_propose(*, node_id: str, node_key: bytes, store: chainstore.ChainStore | None = None) -> Proposed:
    """Build the next block from this node's mempool, signed by its proposer (empty when nothing is pending)."""
    store = store or chainstore.primary()
    with _seal_lock:
        head, _ = _ensure_genesis(store)
        state = DbState()
        params = state.params()
        pending = _load_pending(params.max_block_txs + 256, params.max_tx_size)
        state.prefetch([seq_key(tx.signer) for tx in pending.txs])
        sealed = ledger.seal_block(
            parent=head,
            pending=pending.txs,
            state=state,
            registry=registry(),
            node_id=node_id,
            node_key=node_key,
            threads=SIGNATURE_THREADS,
        )
        dropped, _ = _refused(pending, sealed, state)
        _delete_mempool(ids=[pk for pk, _, _ in dropped])  # never valid: proposing them again changes nothing
        txs = list(sealed.result.txs)
        return Proposed(sealed.block, txs, encode_value(sealed.block, txs), sealed.result)


def chain_check_proposal(
    block: CoreBlock, txs: Sequence[CoreTx], *, store: chainstore.ChainStore | None = None
) -> ledger.BlockResult | ValidationError:
    """Whether ``block`` may be voted for on top of this node's head: its changes if valid, else why not.

    The changes can be handed to :func:`chain_commit` once the block is decided, which then checks
    only its certificate instead of applying every transaction again.
    """
    store = store or chainstore.primary()
    _mark_checked_at_submission(txs)
    with _seal_lock:
        head, _ = _ensure_genesis(store)
        try:
            return ledger.validate_block(
                block,
                parent=head,
                txs=txs,
                state=DbState(),
                registry=registry(),
                require_quorum=False,
                threads=SIGNATURE_THREADS,
            )
        except ValidationError as exc:
            return exc


def _mark_checked_at_submission(txs: Sequence[CoreTx]) -> None:
    """Skip verifying again the signatures of transactions this node's mempool holds.

    They were verified when they entered it, and a CID names the exact bytes,
    signature included: the same CID is the same signed transaction.
    """
    held = _pending_cids([str(tx.cid) for tx in txs if not tx.signature_checked])
    for tx in txs:
        if str(tx.cid) in held:
            tx.mark_signature_checked()


def chain_commit(
    block: CoreBlock,
    txs: Sequence[CoreTx],
    *,
    checked: ledger.BlockResult | None = None,
    store: chainstore.ChainStore | None = None,
) -> Block:
    """Validate a decided block (its certificate a quorum of precommits), store it and project it.

    The same path takes blocks this node helped decide and blocks fetched from
    a peer to catch up: either way nothing is stored unproven. The block's
    transactions leave this node's mempool in the projection's transaction.
    """
    store = store or chainstore.primary()
    with _seal_lock:
        head, _ = _ensure_genesis(store)
        if block.height <= head.height:
            stored = store.cid_at(block.height)
            if stored == block.cid:
                return Block.objects.get(height=block.height)
            raise ChainError(f"a second block at height {block.height}: {block.cid}, stored {stored}")
        if checked is not None and checked.block.cid == block.cid and block.parent == head.cid:
            # Applied on top of this very head when it was proposed: only the certificate is new.
            ledger.check_certificate(block, authorities_of(DbState()))
            result = ledger.BlockResult(block, checked.txs, checked.changes)
        else:
            result = ledger.validate_block(
                block,
                parent=head,
                txs=txs,
                state=DbState(),
                registry=registry(),
                now_ms=max(clock_ms(), block.timestamp),  # decided by a quorum: a slow clock must not refuse it
                threads=SIGNATURE_THREADS,
            )
        size = store.write_block(block, txs)
        row = _commit_block(result, size)
        _head_cache[store.path] = block
        return row


def chain_blocks(start: int, limit: int, *, store: chainstore.ChainStore | None = None) -> list[bytes]:
    """Blocks ``start``… (at most ``limit``) with their transactions, as values, for a peer catching up."""
    store = store or chainstore.primary()
    top = store.head()
    if top is None:
        return []
    blocks = []
    for height in range(start, min(top[0], start + limit - 1) + 1):
        block = store.block_at(height)
        blocks.append(encode_value(block, store.get_txs(block.txs)))
    return blocks


def chain_store_gap(*, store: chainstore.ChainStore | None = None) -> tuple[int, int] | None:
    """(store head, projection head) when the database shows blocks the chain store lost; else None.

    What a torn write at the tail of the store's log leaves: RocksDB recovers
    to its last whole record, which may be before blocks already projected.
    """
    store = store or chainstore.primary()
    top = store.head()
    db_top = Block.objects.order_by("-height").values_list("height", flat=True).first()
    if db_top is None:
        return None
    height = -1 if top is None else top[0]
    return (height, db_top) if db_top > height else None


def chain_refill(block: CoreBlock, txs: Sequence[CoreTx], *, store: chainstore.ChainStore | None = None) -> None:
    """Put back into the chain store a block it lost but the projection holds (from a peer).

    It must be the very block projected at its height (same CID) and carry a
    valid certificate by a quorum of the current authorities; its transactions
    must be the ones it links. The projection is not touched: it already holds
    this block.
    """
    store = store or chainstore.primary()
    with _seal_lock:
        projected = Block.objects.filter(height=block.height).values_list("cid", flat=True).first()
        if projected != str(block.cid):
            raise ChainError(f"block {block.height} from a peer is {block.cid}, but this node projected {projected}")
        top = store.head()
        if (top[0] if top else -1) != block.height - 1:
            raise ChainError(f"the chain store does not end just before block {block.height}")
        if block.genesis is None:
            ledger.check_certificate(block, authorities_of(DbState()))
        if [tx.cid for tx in txs] != list(block.txs):
            raise ChainError(f"the transactions given are not block {block.height}'s")
        store.write_block(block, txs)
        _head_cache.pop(store.path, None)
