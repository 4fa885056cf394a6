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
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.keys import signing_private_key
from chain.core.blockstore import add_file
from chain.core.cid import CID, DAG_PB
from chain.core.dagpb import PBLink, PBNode, encode_node
from chain.ledger_services import tx_sign_and_submit
from records import ledger
from records.clinical.uploads import spool_path
from records.consortium.deliveries import deliveries_owed
from records.models import MedicalRecord, RecordFile, RecordVersion, RekeyItem
from records.revocation import grant_revocation_submit

log = logging.getLogger(__name__)


def _dag():
    from chain.stores import dag_writer

    return dag_writer()


def file_ingest(file_id: int) -> str:
    """Move one spooled (encrypted) file into the DAG and pin it."""
    record_file = RecordFile.objects.filter(pk=file_id).select_related("version").first()
    if record_file is None:
        return "gone"
    if record_file.status == RecordFile.Status.STORED:
        return "stored"
    path = spool_path(record_file.stream_id)
    if not os.path.exists(path):
        RecordFile.objects.filter(pk=file_id, status=RecordFile.Status.SPOOLED).update(
            status=RecordFile.Status.FAILED, error="spool file missing"
        )
        log.error("spool file for record file %s is missing", record_file.public_id)
        return "failed"
    with open(path, "rb") as handle:
        result = add_file(
            _dag(), handle, chunk_size=settings.DAG_CHUNK_SIZE, max_links=settings.DAG_MAX_LINKS, pin=True
        )
    with transaction.atomic():
        updated = RecordFile.objects.filter(pk=file_id, status=RecordFile.Status.SPOOLED).update(
            status=RecordFile.Status.STORED, root_cid=str(result.root), stored_at=timezone.now()
        )
    if not updated:
        # Someone else stored it meanwhile: drop our extra pin.
        _dag().unpin(result.root)
    with contextlib.suppress(FileNotFoundError):  # a duplicate task (re-drive) finished first
        os.unlink(path)
    version = record_file.version
    if version.storage == RecordVersion.Storage.PENDING:
        version_store(version.pk)
    return "stored"


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
