"""Store-worker services for records: ingest spooled files, store and anchor versions.

Only the store worker calls these (DESIGN section 3: it is the one RocksDB
writer). Each is idempotent: it looks at the rows first and does nothing that
is already done, so a re-driven or duplicated task is harmless. A version is
anchored on chain in the same database transaction that marks it stored, so a
stored version always has its anchor transaction queued, and vice versa.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.keys import signing_private_key
from chain.core.blockstore import HELPER_MIN_BYTES, add_file
from chain.core.cid import CID, DAG_PB
from chain.core.dagpb import PBLink, PBNode, encode_node
from chain.core.errors import CodecError
from chain.core.streamio import GrowingFile
from chain.ledger_services import tx_sign_and_submit
from records import ledger
from records.clinical.uploads import lock_spool, spool_path
from records.consortium.deliveries import deliveries_owed
from records.models import EarlyIngest, MedicalRecord, RecordFile, RecordVersion, RekeyItem
from records.revocation import grant_revocation_submit

log = logging.getLogger(__name__)


def _dag():
    from chain.stores import dag_writer

    return dag_writer()


def file_ingest(file_id: int) -> str:
    """Move one spooled (encrypted) file into the DAG and pin it.

    When the store worker added the file while it was uploaded
    (:func:`upload_ingest_early`), this takes that pin instead of adding the
    file again; while that add is still finishing, it waits for it.
    """
    record_file = RecordFile.objects.filter(pk=file_id).select_related("version").first()
    if record_file is None:
        return "gone"
    if record_file.status == RecordFile.Status.STORED:
        return "stored"
    path = spool_path(record_file.stream_id)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; held open, it holds the lock
    except FileNotFoundError:
        record_file.refresh_from_db(fields=["status"])
        if record_file.status == RecordFile.Status.STORED:  # the early add finished and took it meanwhile
            return "stored"
        RecordFile.objects.filter(pk=file_id, status=RecordFile.Status.SPOOLED).update(
            status=RecordFile.Status.FAILED, error="spool file missing"
        )
        log.error("spool file for record file %s is missing", record_file.public_id)
        return "failed"
    with handle:
        if not lock_spool(handle.fileno(), wait=EARLY_INGEST_WAIT):
            return "waiting"  # the early add is still at work; the re-drive asks again
        record_file.refresh_from_db(fields=["status"])
        if record_file.status == RecordFile.Status.STORED:  # the early add took it while we waited
            return "stored"
        early = EarlyIngest.objects.filter(stream_id=record_file.stream_id).first()
        if early is not None and early.ciphertext_size == record_file.ciphertext_size:
            root = CID.decode(early.root_cid)
        else:
            if early is not None:
                early_ingest_drop(early.pk)
            result = add_file(
                _dag(), handle, chunk_size=settings.DAG_CHUNK_SIZE, max_links=settings.DAG_MAX_LINKS, pin=True
            )
            root = result.root
        return _file_stored(record_file, root)


def _file_stored(record_file: RecordFile, root: CID) -> str:
    """The file's ciphertext is in the DAG under ``root``, with a pin of ours: the file takes the pin."""
    with transaction.atomic():
        updated = RecordFile.objects.filter(pk=record_file.pk, status=RecordFile.Status.SPOOLED).update(
            status=RecordFile.Status.STORED, root_cid=str(root), stored_at=timezone.now()
        )
        EarlyIngest.objects.filter(stream_id=record_file.stream_id).delete()  # its pin is the file's now
    if not updated:
        # Someone else stored it meanwhile: drop our extra pin.
        _dag().unpin(root)
    spool = spool_path(record_file.stream_id)
    for name in (spool, spool + ".part.end"):  # the file, and the end marker of an early add that never ran
        with contextlib.suppress(FileNotFoundError):  # a duplicate task (re-drive) finished first
            os.unlink(name)
    version = record_file.version
    if version.storage == RecordVersion.Storage.PENDING:
        version_store(version.pk)
    return "stored"


# -- adding an upload while it arrives ----------------------------------------------------------
EARLY_INGEST_WAIT = 600.0
"""How long ``file_ingest`` waits for an early add still finishing (it finishes seconds after its upload)."""

_EARLY_ADDS = threading.BoundedSemaphore(1)
"""Early adds at once in a store worker. One lasts as long as its upload (minutes, over a slow network)
while it holds one of the worker's threads, which also seal blocks: the others are not all taken."""


def upload_ingest_early(stream_id: str) -> str:
    """Add an upload's spool file to the DAG while the upload is still writing it.

    The web process asks for this once a large upload has written
    :data:`~records.clinical.uploads.EARLY_INGEST_BYTES`; reading and hashing
    here, and the SST helpers' writing, then overlap the rest of the upload
    instead of following it. The spool file is read through a link of its
    own (the upload renames it when it ends) and up to the end the upload
    marks (:class:`~chain.core.streamio.GrowingFile`). The add holds a lock on
    the file that :func:`file_ingest` waits for, so the file is never added
    twice. Returns:

    * ``stored``: the upload's record file existed, and took the pin;
    * ``held``: the pin is recorded (:class:`EarlyIngest`) for the record file to come;
    * ``late``: the upload had ended, or ``file_ingest`` has the file: that adds it;
    * ``busy``: another early add is running here: ``file_ingest`` adds this one after its upload;
    * ``refused``: the upload stopped (refused, cut off, or silent for a minute): nothing is kept.
    """
    part = spool_path(stream_id) + ".part"
    if not _EARLY_ADDS.acquire(blocking=False):
        return "busy"
    try:
        return _add_growing(stream_id, part)
    finally:
        _EARLY_ADDS.release()


def _add_growing(stream_id: str, part: str) -> str:
    link = spool_path(stream_id) + ".early"
    try:
        try:
            os.link(part, link)
        except FileNotFoundError:
            return "late"
        growing = GrowingFile(link, marker_of=part)
        # Closing the reader closes the file, and the file's lock goes with it: it lasts to the end.
        with io.BufferedReader(growing, buffer_size=settings.DAG_CHUNK_SIZE) as reader:
            if not lock_spool(growing.source_fd(), wait=0):
                return "late"
            try:
                result = add_file(
                    _dag(),
                    reader,
                    chunk_size=settings.DAG_CHUNK_SIZE,
                    max_links=settings.DAG_MAX_LINKS,
                    pin=True,
                    size_hint=HELPER_MIN_BYTES,  # large by the time it is asked for: through the SST helpers
                    source_fd=growing.source_fd(),
                )
            except CodecError as exc:  # the upload did not end well: it leaves nothing, nor does this
                log.info("early add of upload %s stopped: %s", stream_id, exc)
                return "refused"
            return _early_added(stream_id, result.root, result.size)
    finally:
        for name in (link, part + ".end"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _early_added(stream_id: str, root: CID, size: int) -> str:
    record_file = RecordFile.objects.filter(stream_id=stream_id).select_related("version").first()
    if record_file is None:
        EarlyIngest.objects.create(stream_id=stream_id, root_cid=str(root), ciphertext_size=size)
        return "held"
    if record_file.status != RecordFile.Status.SPOOLED or record_file.ciphertext_size != size:
        _dag().unpin(root)  # not ours to give (a file ``file_ingest`` could not have stored: we held the lock)
        log.error("early add of upload %s does not match its record file %s", stream_id, record_file.public_id)
        return "late"
    return _file_stored(record_file, root)


def early_ingest_drop(early_id: int) -> None:
    """Let go of an early add no record file took: its pin, then its row."""
    early = EarlyIngest.objects.filter(pk=early_id).first()
    if early is None:
        return
    root = CID.decode(early.root_cid)
    store = _dag()
    if store.pin_count(root):  # a row left by a drop cut short after its unpin has none left to drop
        store.unpin(root)
    early.delete()


def early_ingests_unclaimed(minutes: int = 60):
    """Early adds no record file took within ``minutes``: their uploads were refused after arriving."""
    cutoff = timezone.now() - timedelta(minutes=minutes)
    claimed = RecordFile.objects.filter(stream_id=OuterRef("stream_id"))
    return EarlyIngest.objects.filter(created_at__lt=cutoff).exclude(Exists(claimed))


def _manifest(version: RecordVersion, content_root: CID, files: list[RecordFile]) -> tuple[bytes, CID]:
    links = [PBLink(cid=content_root, name="content", tsize=version.content_size)]
    links += [
        PBLink(cid=CID.decode(f.root_cid), name=f"file-{index:04d}", tsize=f.ciphertext_size)
        for index, f in enumerate(files)
    ]
    data = encode_node(PBNode(links=links, data=None))
    return data, CID.of(DAG_PB, data)


def _revoked_grant(version: RecordVersion):
    """The grant whose revocation a re-keyed version follows; None for any other version."""
    if version.origin != RecordVersion.Origin.REKEY:
        return None
    item = RekeyItem.objects.select_related("job__grant").filter(new_version=version).first()
    return item.job.grant if item is not None else None


def version_store(version_id: int) -> str:
    """Store a finalised version's ciphertext and manifest; anchor it on chain."""
    version = (
        RecordVersion.objects.filter(pk=version_id).select_related("record", "record__patient", "created_by").first()
    )
    if version is None:
        return "gone"
    if version.storage == RecordVersion.Storage.STORED:
        return "stored"
    if version.storage != RecordVersion.Storage.PENDING:
        return "draft"
    files = list(version.files.all())
    if any(f.status != RecordFile.Status.STORED for f in files):
        return "waiting"  # the last file's ingest calls us again
    from chain.models import Transaction

    previous = None
    if version.number > 1:
        previous = version.record.versions.filter(number=version.number - 1).first()
        if previous is None or previous.storage != RecordVersion.Storage.STORED:
            return "waiting-previous"
        if not Transaction.objects.filter(cid=previous.anchor_tx).exists():
            # The chain validates a supersession against sealed state only.
            return "waiting-previous"
    revoked = _revoked_grant(version)
    if revoked is not None and not revoked.revoked_tx:
        grant_revocation_submit(revoked)  # it waited for the grant's own issue to be sealed
        revoked.refresh_from_db(fields=["revoked_tx"])
    if revoked is not None and not Transaction.objects.filter(cid=revoked.revoked_tx).exists():
        return "waiting-previous"  # a re-encryption names its revocation, which must be sealed first
    store = _dag()
    # The content stays pinned until the manifest holds it, so a collection running meanwhile
    # (store.dag_gc) never takes blocks of a DAG still being assembled.
    content = add_file(
        store,
        io.BytesIO(bytes(version.content_ciphertext)),
        chunk_size=settings.DAG_CHUNK_SIZE,
        max_links=settings.DAG_MAX_LINKS,
        pin=True,
    )
    manifest, root = _manifest(version, content.root, files)
    store.put_pinned(root, manifest)
    store.unpin(content.root)
    record = version.record
    salt = bytes(version.commitment_salt) or os.urandom(32)
    digest = ledger.commitment(
        salt=salt, patient_id=str(record.patient.public_id), record_id=str(record.public_id), root=str(root)
    )
    try:
        with transaction.atomic():
            locked = RecordVersion.objects.select_for_update().get(pk=version_id)
            if locked.storage == RecordVersion.Storage.STORED:
                store.unpin(root)
                return "stored"
            payload = {"record": bytes(record.anchor_id), "version": version.number, "root": root, "commitment": digest}
            tx_type, signer = ledger.ANCHORED, version.created_by
            if previous is not None:
                payload["previous"] = CID.decode(previous.root_cid)
                tx_type = ledger.SUPERSEDED
            if revoked is not None:  # new keys, same content: the patient who revoked signs it
                payload["grant"] = bytes(revoked.chain_id)
                tx_type, signer = ledger.REKEYED, record.patient
            entry = tx_sign_and_submit(private_key=signing_private_key(signer), type=tx_type, payload=payload)
            locked.storage = RecordVersion.Storage.STORED
            locked.root_cid = str(root)
            locked.commitment = digest.hex()
            locked.commitment_salt = salt
            locked.anchor_tx = entry.cid
            locked.store_error = ""
            locked.save(
                update_fields=["storage", "root_cid", "commitment", "commitment_salt", "anchor_tx", "store_error"]
            )
            MedicalRecord.objects.filter(pk=record.pk).update(updated_at=timezone.now())
            deliveries_owed(locked)  # a patient whose home is another node gets it there
    except Exception as exc:
        store.unpin(root)
        RecordVersion.objects.filter(pk=version_id).update(
            store_attempts=version.store_attempts + 1, store_error=str(exc)[:300]
        )
        raise
    return "stored"


def pending_too_long(minutes: int = 2):
    cutoff = timezone.now() - timedelta(minutes=minutes)
    files = RecordFile.objects.filter(status=RecordFile.Status.SPOOLED, uploaded_at__lt=cutoff)
    versions = RecordVersion.objects.filter(storage=RecordVersion.Storage.PENDING, finalized_at__lt=cutoff)
    return files, versions
