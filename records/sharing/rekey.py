"""Re-keying after a revocation (DESIGN section 5): the store worker's side.

``records.sharing.grants.grant_revoke`` writes a ``RekeyJob`` and one ``RekeyItem``
per record the grant covered, in the revocation's own transaction, and queues
``store.records_rekey`` on commit. Here every pending item is processed in its
own database transaction:

1. the record's current version is opened with the patient's envelope;
2. a fresh data key encrypts its content, unchanged, as a new version of origin
   ``rekey`` that keeps its predecessor's author; each file gets a fresh file key and stream id, and its
   ciphertext is stream-decrypted from the DAG and stream-encrypted into a
   spool file, one segment at a time, then added to the DAG (memory stays
   bounded whatever the file size);
3. the new version is sealed to the *current* recipients only (patient,
   author, the record's institution, grantees of grants still in force), so
   the revoked grantee gets no envelope; their envelopes on the older versions
   of the record are deleted (the rows stay for history);
4. the item is marked done and the job's counter moves, in the same transaction.

After the commit the old version's manifest and file roots are unpinned (the
periodic ``store.dag_gc`` drops the old ciphertext) and the new version is
stored and anchored as ``records.rekeyed`` by ``records.clinical.storage.version_store``,
signed by the patient and naming the revoked grant; it waits while the previous
anchor or the revocation is unsealed.

Resumable and idempotent: a run killed midway leaves its finished items done
and the current one rolled back (its new DAG roots are unpinned when the
failure is seen), so the next run (the task's retry or ``records_redrive``)
takes only the pending ones; a rerun of a finished job does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max
from django.utils import timezone

from chain.core import stream
from chain.core.blockstore import add_file
from chain.core.cid import CID
from chain.core.errors import CryptoError
from chain.core.streamio import read_ahead
from records.clinical.reading import READ_AHEAD
from records.clinical.services import version_recipients
from records.clinical.storage import version_store
from records.keys import decrypt_content, encrypt_content, open_dek, seal_for, unwrap_file_key, wrap_file_key
from records.models import MedicalRecord, RecordFile, RecordVersion, RekeyItem, RekeyJob, WrappedKey
from records.revocation import grant_revocation_submit

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


class RekeyWaiting(Exception):
    """The record's current version is still being stored; try again later."""


def _dag():
    from chain.stores import dag_writer

    return dag_writer()


def _after_item(item_id: int) -> None:
    """A hook between items (tests use it to simulate a worker killed midway)."""


# -- one file --------------------------------------------------------------------------------
class _Pieces:
    """A readable stream over an iterator of byte strings: what ``add_file`` reads its chunks from.

    A read of exactly the next piece's size returns that piece itself; other
    reads join what they span.
    """

    def __init__(self, pieces) -> None:
        self._pieces = iter(pieces)
        self._held: deque[bytes] = deque()
        self._held_bytes = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or self._held_bytes < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._held.append(piece)
            self._held_bytes += len(piece)
        if size < 0 or size >= self._held_bytes:
            size = self._held_bytes
        taken, missing = [], size
        while missing:
            piece = self._held.popleft()
            if len(piece) > missing:  # the rest of this piece starts the next read
                self._held.appendleft(piece[missing:])
                piece = piece[:missing]
            taken.append(piece)
            missing -= len(piece)
        self._held_bytes -= size
        return b"".join(taken)  # a single piece is returned as it is, not copied


def _reencrypt_file(store, old: RecordFile, old_key: bytes, new: RecordFile, new_key: bytes) -> tuple[CID, int]:
    """Re-encrypt ``old``'s stream from the DAG into ``new``'s, added to the DAG as it is made.

    No spool file: the old blocks are read (and re-hashed) on a thread of
    their own, each segment is opened and sealed again in place by
    :func:`chain.core.stream.reencrypt`, and each new chunk goes straight into
    ``add_file``, which hashes it while helper processes write the blocks.
    Memory: a few chunks. Returns the new root (pinned) and the new
    ciphertext size; a damaged old stream raises :class:`CryptoError`.
    """
    blocks = read_ahead(store.cat(CID.decode(old.root_cid)), READ_AHEAD)
    chunks = stream.reencrypt(
        old_key,
        blocks,
        associated_data=old.stream_associated_data(),
        ciphertext_total=old.ciphertext_size,
        plaintext_total=old.size,
        new_key=new_key,
        new_associated_data=new.stream_associated_data(),
        chunk_size=settings.DAG_CHUNK_SIZE,
    )
    try:
        result = add_file(
            store,
            _Pieces(chunks),
            chunk_size=settings.DAG_CHUNK_SIZE,
            max_links=settings.DAG_MAX_LINKS,
            pin=True,
            size_hint=old.ciphertext_size,  # the new ciphertext is as long: large ones go through the SST helper
        )
    except CryptoError as exc:  # nothing was pinned: add_file pins only a finished object
        raise CryptoError(f"file {old.public_id}: {exc}") from None
    finally:
        blocks.close()  # stops the reading thread if the stream failed midway
    return result.root, result.size


def _unpin_once(store, roots) -> int:
    dropped = 0
    for root in dict.fromkeys(r for r in roots if r):
        cid = CID.decode(root)
        if store.pin_count(cid):
            store.unpin(cid)
            dropped += 1
    return dropped


# -- one record ------------------------------------------------------------------------------
def rekey_item(item_id: int) -> str:
    """Re-key one record; ``done``, ``skipped`` (already done) or raises :class:`RekeyWaiting`."""
    store = _dag()
    new_roots: list[CID] = []
    try:
        with transaction.atomic():
            item = RekeyItem.objects.select_for_update().select_related("job__grant").get(pk=item_id)
            if item.status == RekeyItem.Status.DONE:
                return "skipped"
            record = (
                MedicalRecord.objects.select_for_update()
                .select_related("patient", "author", "institution")
                .get(pk=item.record_id)
            )
            current = RecordVersion.objects.select_for_update().get(pk=record.current_version_id)
            old_files = list(current.files.select_related("version", "uploaded_by"))
            if current.storage != RecordVersion.Storage.STORED or any(
                f.status != RecordFile.Status.STORED for f in old_files
            ):
                raise RekeyWaiting(f"record {record.public_id}: version {current.number} is not stored yet")
            envelope = WrappedKey.objects.select_related("user").get(version=current, user=record.patient)
            old_dek = open_dek(current, envelope)
            content = decrypt_content(old_dek, current)

            now = timezone.now()
            number = (record.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            dek = stream.new_data_key()
            version = RecordVersion(
                record=record,
                number=number,
                origin=RecordVersion.Origin.REKEY,
                created_by=current.created_by,  # new keys, same content, same clinical author
                storage=RecordVersion.Storage.PENDING,
                finalized_at=now,
                content_ciphertext=b"",
            )
            version.save()
            ids = {}
            for old in old_files:
                new = RecordFile(
                    version=version,
                    stream_id=uuid.uuid4(),
                    media_type=old.media_type,
                    size=old.size,
                    ciphertext_size=0,
                    status=RecordFile.Status.STORED,
                    uploaded_by=old.uploaded_by,
                    uploaded_at=old.uploaded_at,
                    stored_at=now,
                    position=old.position,
                )
                file_key = stream.new_data_key()
                root, size = _reencrypt_file(store, old, unwrap_file_key(old_dek, old), new, file_key)
                new_roots.append(root)
                new.root_cid = str(root)
                new.ciphertext_size = size
                new.key_wrapped = wrap_file_key(dek, file_key, new)
                new.save()
                ids[str(old.public_id)] = str(new.public_id)
            content["files"] = [{**f, "id": ids.get(f["id"], f["id"])} for f in content.get("files", [])]
            version.content_ciphertext = encrypt_content(dek, version, content)
            version.content_size = len(version.content_ciphertext)
            version.save(update_fields=["content_ciphertext", "content_size"])

            users, institutions = version_recipients(record, author=record.patient)
            WrappedKey.objects.bulk_create(seal_for(version, dek, users=users, institutions=institutions))
            grant = item.job.grant
            older = WrappedKey.objects.filter(version__record=record).exclude(version=version)
            if grant.grantee_user_id and grant.grantee_user_id not in {u.pk for u in users}:
                older.filter(user_id=grant.grantee_user_id).delete()
            if grant.grantee_institution_id and grant.grantee_institution_id not in {i.pk for i in institutions}:
                older.filter(institution_id=grant.grantee_institution_id).delete()

            MedicalRecord.objects.filter(pk=record.pk).update(current_version=version, updated_at=now)
            item.status = RekeyItem.Status.DONE
            item.new_version = version
            item.done_at = now
            item.save(update_fields=["status", "new_version", "done_at"])
            RekeyJob.objects.filter(pk=item.job_id).update(
                done_count=F("done_count") + 1, updated_at=now, status=RekeyJob.Status.RUNNING, error=""
            )
            old_roots = [current.root_cid] + [f.root_cid for f in old_files]
    except BaseException:
        for root in new_roots:  # the rows rolled back: drop the orphan ciphertext's pins
            with contextlib.suppress(Exception):
                store.unpin(root)
        raise
    # Committed: the old ciphertext is no longer referenced by any current version.
    _unpin_once(store, old_roots)
    return "done"


# -- one job -----------------------------------------------------------------------------------
def rekey_job_run(job_id: int) -> str:
    """Work through a job's pending items; ``done``, ``waiting``, ``failed`` or ``gone``.

    Each item commits on its own; an unexpected error is recorded on the job
    (which stays ``running``, so the redrive re-queues it) and re-raised.
    """
    job = RekeyJob.objects.filter(pk=job_id).first()
    if job is None:
        return "gone"
    if job.status == RekeyJob.Status.DONE:
        return "done"
    RekeyJob.objects.filter(pk=job_id).exclude(status=RekeyJob.Status.DONE).update(
        status=RekeyJob.Status.RUNNING, updated_at=timezone.now()
    )
    # Its versions name the revocation on chain, which must be sealed first: submit it as soon
    # as the grant's own issue is sealed instead of waiting for the minute's redrive.
    grant_revocation_submit(job.grant)
    waiting = False
    failed = ""  # the last item that cannot be re-keyed: the job's error once the others are done
    for item_id in list(job.items.filter(status=RekeyItem.Status.PENDING).values_list("pk", flat=True)):
        try:
            outcome = rekey_item(item_id)
        except RekeyWaiting as exc:
            waiting = True
            RekeyJob.objects.filter(pk=job_id).update(error=str(exc)[:300], updated_at=timezone.now())
            continue
        except (CryptoError, WrappedKey.DoesNotExist) as exc:
            # Cannot be fixed by retrying (no patient envelope, damaged ciphertext): a person must look.
            failed = str(exc)[:300] or "crypto error"
            log.error("re-keying item %s of job %s failed: %s", item_id, job_id, exc)
            RekeyJob.objects.filter(pk=job_id).update(error=failed)
            continue
        except Exception as exc:
            RekeyJob.objects.filter(pk=job_id).update(error=str(exc)[:300], updated_at=timezone.now())
            raise
        if outcome == "done":
            new_version_id = RekeyItem.objects.filter(pk=item_id).values_list("new_version_id", flat=True).first()
            if new_version_id:
                try:
                    version_store(new_version_id)  # "waiting-previous": the rekey task queues the store task
                except Exception:  # the pending version is the outbox; the redrive stores it later
                    log.exception("storing re-keyed version %s failed; the redrive retries", new_version_id)
        _after_item(item_id)
    remaining = job.items.filter(status=RekeyItem.Status.PENDING).count()
    done = job.items.filter(status=RekeyItem.Status.DONE).count()
    if remaining == 0:
        status, result = RekeyJob.Status.DONE, "done"
    elif failed and not waiting:
        status, result = RekeyJob.Status.FAILED, "failed"
    else:
        status, result = RekeyJob.Status.RUNNING, "waiting"
    fields = {"status": status, "done_count": done, "updated_at": timezone.now()}
    if status == RekeyJob.Status.DONE:
        fields["error"] = ""
    elif status == RekeyJob.Status.FAILED:
        fields["error"] = failed  # later items' progress cleared it
    RekeyJob.objects.filter(pk=job_id).update(**fields)
    if result == "done":
        log.info("re-keying job %s finished: %d records", job.public_id, done)
    return result


def rekey_jobs_stale(minutes: int = 5):
    """Jobs pending or running with no progress for ``minutes`` (lost message, killed worker)."""
    cutoff = timezone.now() - timedelta(minutes=minutes)
    return RekeyJob.objects.filter(status__in=[RekeyJob.Status.PENDING, RekeyJob.Status.RUNNING], updated_at__lt=cutoff)


FAILED_SHOWN = 20


def rekey_health(stale_minutes: int = 5) -> dict:
    """The operator page's re-keying card: jobs by status, stalled ones, and why the failed stopped.

    Names no patient: a job is known by its id, its progress and its error. Three queries.
    """
    by_status = dict(RekeyJob.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    failed = [
        {
            "job": str(job["public_id"]),
            "done": job["done_count"],
            "total": job["total"],
            "error": job["error"],
            "updated_at": job["updated_at"],
        }
        for job in RekeyJob.objects.filter(status=RekeyJob.Status.FAILED)
        .order_by("-updated_at")
        .values("public_id", "done_count", "total", "error", "updated_at")[:FAILED_SHOWN]
    ]
    return {
        "counts": {status: by_status.get(status, 0) for status in RekeyJob.Status.values},
        "stalled": rekey_jobs_stale(stale_minutes).count(),
        "stale_minutes": stale_minutes,
        "failed": failed,
    }
