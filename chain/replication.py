"""Where a consortium's DAG objects live, and whether enough nodes hold each.

Every object (record ciphertext, manifests, key bundles) should be held by
``DAG_REPLICATION_TARGET`` nodes and at least ``DAG_REPLICATION_MIN``, as IPFS
Cluster's replication factors. Which nodes is computed by every node alike,
by rendezvous hashing of the CID over the current authorities
(:mod:`chain.core.placement`): no allocator, no leader. Nodes fetch objects
from each other over the peer port's trustless gateway (``GET /ipfs/{cid}``,
:mod:`chain.peers`), which answers authenticated consortium nodes only.

A single node is its own only member: every object has one holder, itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from celery import Task
from celery.result import AsyncResult
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chain import dag_tasks, stores
from chain.cluster import cluster_config
from chain.core.blockstore import BlockStore, StoreError
from chain.core.cid import CID
from chain.core.consortium import authorities_of
from chain.core.errors import CodecError, CoreError, IntegrityError, NotFoundError
from chain.core.placement import Replication, holders, ranked
from chain.core.streamio import finish_growing, remove_growing
from chain.ledger_registry import pin_intents
from chain.ledger_services import DbState
from chain.models import Replica, ReplicationCursor, Transaction
from chain.peers import PeerClient
from chain.services import node_identity, node_signing_key

logger = logging.getLogger(__name__)

# What a node says of one object.
PINNED = "pinned"  # every block here, and pinned: it stays
HELD = "held"  # every block here (a peer holds it whole; whether it pins is its own business)
UNPINNED = "unpinned"  # every block here, not pinned: the next gc may remove it
INCOMPLETE = "incomplete"  # the root here, some blocks missing: never served
MISSING = "missing"
UNREACHABLE = "unreachable"
ERROR = "error"

WHOLE = {PINNED, HELD, UNPINNED}


def replication() -> Replication:
    return Replication(
        minimum=min(settings.DAG_REPLICATION_MIN, settings.DAG_REPLICATION_TARGET),
        target=settings.DAG_REPLICATION_TARGET,
    )


def members() -> list[str]:
    """The nodes that hold objects: the chain's current authorities (this node alone on a single node)."""
    if cluster_config() is None:
        return [settings.NODE_ID]
    return sorted(a.id for a in authorities_of(DbState()))


@dataclass
class ObjectStatus:
    cid: str
    minimum: int
    target: int
    holders: list[str]  # where placement puts it
    nodes: dict[str, dict] = field(default_factory=dict)  # node id → {"state", "holder"}

    @property
    def copies(self) -> int:
        return sum(1 for n in self.nodes.values() if n["state"] in WHOLE)

    @property
    def meets_minimum(self) -> bool:
        return self.copies >= min(self.minimum, len(self.nodes))

    @property
    def at_target(self) -> bool:
        return self.copies >= min(self.target, len(self.nodes))

    def as_dict(self) -> dict:
        return asdict(self) | {
            "copies": self.copies,
            "meets_minimum": self.meets_minimum,
            "at_target": self.at_target,
        }


def local_state(store: BlockStore | None, cid: CID) -> str:
    if store is None:
        return MISSING  # this node's store does not exist yet
    try:
        store.catch_up()
        if not store.has(cid):
            return MISSING
        if store.missing(cid):
            return INCOMPLETE
        return PINNED if store.pin_count(cid) > 0 else UNPINNED
    except StoreError:
        return ERROR
    except CoreError:  # a block here is corrupt or malformed: the object is not whole
        return INCOMPLETE


def object_status(cid: CID, *, store: BlockStore | None) -> ObjectStatus:
    """What every member says about ``cid``: this node from its store, the others over the peer port."""
    factors = replication()
    everyone = members()
    placed = holders(cid, everyone, factors.target)
    status = ObjectStatus(str(cid), factors.minimum, factors.target, placed)
    config = cluster_config()
    client = None
    if config is not None:
        client = PeerClient(settings.NODE_ID, node_signing_key(node_identity()), config.peers)
    for node in everyone:
        if node == settings.NODE_ID:
            state = local_state(store, cid)
            if state not in WHOLE:  # on its way here, or failing: say so (queued, pinning, error)
                row = Replica.objects.filter(cid=str(cid)).values_list("state", flat=True).first()
                state = row if row in (Replica.State.QUEUED, Replica.State.PINNING, Replica.State.ERROR) else state
        elif client is None or node not in client.peers:
            state = UNREACHABLE
        else:
            answer = client.holds(node, cid)
            state = UNREACHABLE if answer is None else HELD if answer else MISSING
        status.nodes[node] = {"state": state, "holder": node in placed}
    return status


# -- the reconciler (Celery beat → default worker; the store worker alone writes the store) ----------------
STALE_CLAIM = timedelta(minutes=15)  # a "pinning" row older than this was left by a worker that died
MAX_BACKOFF = 600.0


def plan(*, batch: int = 1000, everyone: list[str] | None = None) -> int:
    """Read the chain's pin intents past the cursor; queue the objects the placement gives this node.

    Returns how many transactions were read. Idempotent: a row per object, and
    the cursor moves in the same database transaction as the rows it queued.
    When the members changed since the last read, the cursor starts over, so
    a new member takes its share of the existing objects and the objects of a
    member that left find their next holder.
    """
    intents = pin_intents()
    if not intents:
        return 0
    everyone = everyone if everyone is not None else members()
    fingerprint = ",".join(sorted(everyone))
    target = replication().target
    with transaction.atomic():
        cursor, _ = ReplicationCursor.objects.select_for_update().get_or_create(pk=1)
        if cursor.members != fingerprint:
            cursor.last_tx, cursor.members = 0, fingerprint
        rows = list(
            Transaction.objects.filter(pk__gt=cursor.last_tx, type__in=list(intents))
            .order_by("pk")
            .values_list("pk", "type", "payload")[:batch]
        )
        for _pk, type_name, payload in rows:
            pins, releases = intents[type_name]
            kept = _payload_cid(payload, pins)
            if kept is not None and settings.NODE_ID in holders(kept, everyone, target):
                Replica.objects.get_or_create(cid=str(kept))
            gone = _payload_cid(payload, releases) if releases else None
            if gone is not None:
                Replica.objects.get_or_create(cid=str(gone), defaults={"state": Replica.State.RELEASED})
                Replica.objects.filter(cid=str(gone)).exclude(state=Replica.State.RELEASED).update(
                    state=Replica.State.RELEASING, next_try_at=timezone.now()
                )
        if rows:
            cursor.last_tx = rows[-1][0]
        cursor.save(update_fields=["last_tx", "members"])
    return len(rows)


def reconcile(*, limit: int = 20, client: PeerClient | None = None, everyone: list[str] | None = None) -> dict:
    """Fetch, pin or let go of the objects that are due; counts of what happened."""
    everyone = everyone if everyone is not None else members()
    if client is None:
        config = cluster_config()
        if config is None:
            return {}
        client = PeerClient(settings.NODE_ID, node_signing_key(node_identity()), config.peers)
    now = timezone.now()
    due = Replica.objects.filter(
        Q(state__in=[Replica.State.QUEUED, Replica.State.ERROR, Replica.State.RELEASING], next_try_at__lte=now)
        | Q(state=Replica.State.PINNING, updated_at__lt=now - STALE_CLAIM)
    ).order_by("next_try_at")
    done: Counter[str] = Counter()
    for replica in due[:limit]:
        try:
            if replica.state == Replica.State.RELEASING:
                done[_release(replica)] += 1
            elif Replica.objects.filter(pk=replica.pk, state=replica.state).update(state=Replica.State.PINNING):
                done[_replicate(replica, client, everyone)] += 1
        except Exception as exc:  # one object's trouble (a store error, a timeout) must not stop the others
            logger.exception("replica %s: %s", replica.cid, exc)
            _failed(replica, [f"{type(exc).__name__}: {exc}"])
            done["error"] += 1
    return dict(done)


def replicate_here(cid: str) -> None:
    """Hold ``cid`` on this node whatever the placement says (a patient's records on their home node).

    Queues it for the reconciler, which fetches it from whichever node holds
    it and keeps one pin reference of this node's; an object already queued,
    held or being held is left as it is. A re-keyed version's release still
    lets it go.
    """
    replica, made = Replica.objects.get_or_create(cid=str(cid))
    if not made and replica.state == Replica.State.ERROR:
        Replica.objects.filter(pk=replica.pk, state=Replica.State.ERROR).update(next_try_at=timezone.now())
    if made or replica.state != Replica.State.PINNED:
        transaction.on_commit(_reconcile_soon)


def _reconcile_soon() -> None:
    from chain.tasks import replicate

    replicate.apply_async(countdown=1)


def audit(*, limit: int = 50) -> int:
    """Check that pinned replicas are still whole here (a wiped or damaged store); queue the lost ones again.

    Takes the rows checked longest ago, a few per run, so every replica is
    looked at in turn; returns how many were queued again.
    """
    try:
        store: BlockStore | None = stores.dag_reader()
    except StoreError:
        store = None  # no store at all (wiped): every pinned replica is lost
    lost = 0
    for replica in Replica.objects.filter(state=Replica.State.PINNED).order_by("updated_at")[:limit]:
        cid = CID.decode(replica.cid)
        state = local_state(store, cid)
        if state == ERROR:
            continue  # the store cannot answer now: ask again next time, change nothing
        if state in WHOLE:
            Replica.objects.filter(pk=replica.pk, state=Replica.State.PINNED).update(state=Replica.State.PINNED)
            continue
        # Our reference survives a damaged block, not a wiped store: remember which, so that
        # fetching it again leaves exactly one reference of ours.
        held = store is not None and state == INCOMPLETE and _pin_count(store, cid) > 0
        logger.warning("replica %s is no longer whole here (%s); fetching it again", replica.cid, state)
        Replica.objects.filter(pk=replica.pk, state=Replica.State.PINNED).update(
            state=Replica.State.QUEUED, attempts=0, source=replica.source if held else "", next_try_at=timezone.now()
        )
        lost += 1
    return lost


def sweep_spool(max_age: timedelta = timedelta(hours=1)) -> int:
    """Remove fetched CARs a killed worker left behind; how many."""
    spool = Path(settings.SPOOL_DIR) / "replicas"
    cutoff = time.time() - max_age.total_seconds()
    removed = 0
    for path in spool.glob("*.car*") if spool.exists() else []:  # CARs and their end markers
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def _replicate(replica: Replica, client: PeerClient, everyone: list[str]) -> str:
    """Make this object whole here with exactly one pin reference of ours (``source`` set: we hold one)."""
    cid = CID.decode(replica.cid)
    try:
        whole_here = local_state(stores.dag_reader(), cid) in WHOLE
    except StoreError:
        whole_here = False
    if whole_here:  # the node that wrote it, or a copy already here: hold a reference of our own
        if not replica.source:
            _store_call(dag_tasks.dag_pin, str(cid))
        _pinned(replica, replica.source or settings.NODE_ID)
        return "pinned"
    problems = []
    spool = Path(settings.SPOOL_DIR) / "replicas"
    spool.mkdir(parents=True, exist_ok=True)
    for peer in [p for p in ranked(cid, everyone) if p != settings.NODE_ID and p in client.peers]:
        path = spool / f"{cid}.{peer}.{uuid.uuid4().hex}.car"
        try:
            # The store worker imports the CAR while it arrives: fetching, hashing and writing overlap.
            # (Tasks run inline when eager: the import then starts once the fetch is over.)
            with path.open("wb") as handle:
                importing = None if _inline() else _store_send(dag_tasks.dag_import_car, str(path), str(cid), True)
                fetched = False
                try:
                    fetched = client.fetch_car(peer, cid, handle, max_bytes=max_object_bytes())
                finally:
                    handle.flush()
                    finish_growing(path, complete=fetched)
            try:
                # Every block verified, the DAG complete and its root the one asked for, or nothing is kept.
                importing = importing or _store_send(dag_tasks.dag_import_car, str(path), str(cid), True)
                _store_wait(dag_tasks.dag_import_car, importing)
            except (CodecError, IntegrityError, NotFoundError) as exc:
                if not fetched:
                    problems.append(f"{peer}: not served")
                    continue
                logger.warning("peer %s served a bad copy of %s (%s); trying another node", peer, cid, exc)
                problems.append(f"{peer}: bad copy ({exc})")
                continue
            if replica.source:  # our earlier reference survived (a damaged block): keep one, not two
                _store_call(dag_tasks.dag_unpin, str(cid))
            _pinned(replica, peer)
            return "pinned"
        finally:
            remove_growing(path)
    _failed(replica, problems or ["no peer to ask"])
    return "error"


def _pinned(replica: Replica, source: str) -> None:
    """Record the reference; if the object was let go meanwhile, leave it to the release to drop it."""
    if not Replica.objects.filter(pk=replica.pk, state=Replica.State.PINNING).update(
        state=Replica.State.PINNED, source=source
    ):
        Replica.objects.filter(pk=replica.pk).update(source=source)


def _failed(replica: Replica, problems: list[str]) -> None:
    attempts = replica.attempts + 1
    Replica.objects.filter(pk=replica.pk).exclude(state__in=[Replica.State.RELEASING, Replica.State.RELEASED]).update(
        state=Replica.State.ERROR,
        attempts=attempts,
        last_error="; ".join(problems)[:500],
        next_try_at=timezone.now() + timedelta(seconds=min(MAX_BACKOFF, 5.0 * 2**attempts)),
    )


def _release(replica: Replica) -> str:
    # Claimed by clearing ``source``: of two workers, only the one whose update lands drops the reference.
    if replica.source and Replica.objects.filter(pk=replica.pk, source=replica.source).update(source=""):
        with contextlib.suppress(NotFoundError):  # nothing left to drop
            _store_call(dag_tasks.dag_unpin, replica.cid)
    Replica.objects.filter(pk=replica.pk, state=Replica.State.RELEASING).update(state=Replica.State.RELEASED)
    return "released"


def _pin_count(store: BlockStore, cid: CID) -> int:
    try:
        return store.pin_count(cid)
    except CoreError:
        return 0


def max_object_bytes() -> int:
    """The largest CAR a peer may send: an upload's limit, plus the DAG's own blocks."""
    return int(settings.UPLOAD_MAX_BYTES * 1.05) + 64 * 1024 * 1024


STORE_CALL_WAIT = 600.0


def _store_call(task: Task, *args: str | bool) -> dict:
    """Run a ``store.…`` task on the store worker (the only writer) and wait for its answer."""
    return _store_wait(task, _store_send(task, *args))


def _store_send(task: Task, *args: str | bool) -> AsyncResult:
    return task.apply_async(args=list(args))


def _inline() -> bool:
    return bool(dag_tasks.dag_import_car.app.conf.task_always_eager)


def _store_wait(task: Task, result: AsyncResult) -> dict:
    """The answer of a ``store.…`` task, or its refusal raised here.

    The wait is bounded: a message lost with a killed store worker must not
    hold the reconciler for the task's hour-long limit. On a timeout the
    object is retried later, and the store's content addressing makes a
    second import of the same CAR harmless.
    """
    return result.get(timeout=min(task.time_limit + 30, STORE_CALL_WAIT), disable_sync_subtasks=False)


def _payload_cid(payload: dict, field_name: str | None) -> CID | None:
    value = payload.get(field_name) if field_name else None
    text = value.get("/") if isinstance(value, dict) else None
    try:
        return CID.decode(text) if isinstance(text, str) else None
    except CodecError:
        return None
