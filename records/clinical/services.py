"""Write paths for visits and records. Views, the API and tasks call these.

Each function writes the change, its audit row and any queued work in one
database transaction. Work for the store worker is queued with
``delay_on_commit``; the rows themselves (a spooled file, a version pending
storage) are the outbox, and ``records_redrive`` re-queues anything pending
too long, so a lost broker message loses nothing.
"""

from __future__ import annotations

import contextlib
import os

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Role
from chain.core import stream
from records.audit import audit
from records.clinical import tasks
from records.clinical.uploads import SpooledUpload, spool_path
from records.envelopes import deliver_to_grantees
from records.keys import decrypt_content, encrypt_content, seal_for, unwrap_file_key, wrap_file_key
from records.models import AccessEvent, MedicalRecord, RecordFile, RecordKind, RecordVersion, Visit, WrappedKey
from records.policy import RecordAccess, grantees_in_scope, record_get_for_user, staff_cleared


class RecordStateError(ValidationError):
    """The record is not in a state that allows this change."""

    http_status = 409  # the API answers a conflict, not invalid input


# -- visits -------------------------------------------------------------------------


@transaction.atomic
def visit_open(*, clinician, patient, kind: str = Visit.Kind.OUTPATIENT, imported: bool = False) -> Visit:
    """Open a visit. ``imported`` marks data loaded by an operator command (seed,
    import) on behalf of a verified clinician, where no live 2FA session exists."""
    if not (staff_cleared(clinician) or (imported and clinician.is_verified_staff)):
        raise PermissionDenied(_("Only verified clinicians with two-factor authentication can open visits."))
    if patient.role != Role.PATIENT:
        raise ValidationError(_("Visits are opened for patients."))
    visit = Visit.objects.create(patient=patient, institution=clinician.institution, opened_by=clinician, kind=kind)
    audit(actor=clinician, action=AccessEvent.Action.OPEN_VISIT, patient=patient, visit=visit)
    return visit


@transaction.atomic
def visit_close(*, clinician, visit: Visit) -> Visit:
    if not (staff_cleared(clinician) and clinician.institution_id == visit.institution_id):
        raise PermissionDenied(_("Only clinicians of this institution can close the visit."))
    visit = Visit.objects.select_for_update().get(pk=visit.pk)
    if visit.status == Visit.Status.OPEN:
        visit.status = Visit.Status.CLOSED
        visit.closed_at = timezone.now()
        visit.save(update_fields=["status", "closed_at"])
        audit(actor=clinician, action=AccessEvent.Action.CLOSE_VISIT, patient=visit.patient, visit=visit)
    return visit


# -- records ------------------------------------------------------------------------


def version_recipients(record: MedicalRecord, *, author):
    """Who gets the version key: the patient, the record's author, whoever wrote
    this version, the record's institution (its care team), and every grantee
    of a current or pending grant whose scope covers the record (one query)."""
    users = [record.patient, record.author, author]
    institution = record.institution or (author.institution if author.institution_id else None)
    institutions = [institution] if institution is not None else []
    grantee_users, grantee_institutions = grantees_in_scope(record)
    return users + grantee_users, institutions + grantee_institutions


def _new_version(
    record: MedicalRecord, *, author, content: dict, number: int, origin: str = RecordVersion.Origin.ORIGINAL
) -> tuple[RecordVersion, bytes]:
    dek = stream.new_data_key()
    version = RecordVersion(record=record, number=number, created_by=author, origin=origin)
    version.content_ciphertext = encrypt_content(dek, version, content)
    version.content_size = len(version.content_ciphertext)
    version.save()
    users, institutions = version_recipients(record, author=author)
    WrappedKey.objects.bulk_create(seal_for(version, dek, users=users, institutions=institutions))
    return version, dek


@transaction.atomic
def record_create(
    *, patient, author, kind: str, content: dict, visit: Visit | None = None, imported: bool = False
) -> MedicalRecord:
    """A new draft record (version 1) for ``patient`` by ``author``.

    ``imported``: loaded by an operator command for a verified clinician (see ``visit_open``).
    """
    if kind not in RecordKind.values:
        raise ValidationError(_("Unknown kind of record."))
    if author.pk == patient.pk:
        if kind != RecordKind.DOCUMENT:
            raise PermissionDenied(_("Patients upload documents; clinical records are written by clinicians."))
    else:
        if not (staff_cleared(author) or (imported and author.is_verified_staff)):
            raise PermissionDenied(_("Only verified clinicians with two-factor authentication can write records."))
        if visit is None or visit.patient_id != patient.pk or visit.institution_id != author.institution_id:
            raise PermissionDenied(_("Records are written within an open visit at your institution."))
        if visit.status != Visit.Status.OPEN:
            raise RecordStateError(_("This visit is closed; open a new visit to add records."))
        if kind == RecordKind.DOCUMENT:
            raise ValidationError(_("Clinicians write clinical records, not patient documents."))
    now = timezone.now()
    record = MedicalRecord.objects.create(
        anchor_id=os.urandom(16),
        patient=patient,
        visit=visit,
        institution=author.institution if author.pk != patient.pk else None,
        author=author,
        kind=kind,
        created_at=now,
        updated_at=now,
    )
    version, _dek = _new_version(record, author=author, content=content, number=1)
    record.current_version = version
    record.save(update_fields=["current_version"])
    audit(actor=author, action=AccessEvent.Action.CREATE, patient=patient, record=record, visit=visit, basis="author")
    return record


@transaction.atomic
def record_finalize_imported(*, record: MedicalRecord) -> MedicalRecord:
    """Finalise a record created by an operator command (no live session, no access helper)."""
    record = MedicalRecord.objects.select_for_update().get(pk=record.pk)
    if record.status != MedicalRecord.Status.DRAFT:
        return record
    now = timezone.now()
    record.status = MedicalRecord.Status.FINAL
    record.save(update_fields=["status"])
    version_id = record.current_version_id
    RecordVersion.objects.filter(pk=version_id).update(storage=RecordVersion.Storage.PENDING, finalized_at=now)
    deliver_to_grantees(record)
    audit(
        actor=record.author,
        action=AccessEvent.Action.FINALIZE,
        patient=record.patient,
        record=record,
        detail="imported",
    )
    transaction.on_commit(lambda: queue_version_store(version_id))
    return record


def _require_draft_author(access: RecordAccess) -> None:
    if access.record.status != MedicalRecord.Status.DRAFT:
        raise RecordStateError(_("A finalised record cannot be edited, only amended."))
    if access.user.pk != access.record.author_id:
        raise PermissionDenied(_("Only the author can edit a draft."))


def _lock_draft(access: RecordAccess) -> RecordVersion:
    """Lock the record, then its version (the order ``record_finalize`` uses) and re-check.

    ``access`` was loaded at the start of the request; a long upload may end
    after the author finalised the record in another tab. Checking the locked
    rows keeps a stored, anchored version from changing underneath its anchor.
    """
    _require_draft_author(access)
    record = MedicalRecord.objects.select_for_update().get(pk=access.record.pk)
    version = RecordVersion.objects.select_for_update().get(pk=access.version.pk)
    if (
        record.status != MedicalRecord.Status.DRAFT
        or version.storage != RecordVersion.Storage.DRAFT
        or record.current_version_id != version.pk
    ):
        raise RecordStateError(_("A finalised record cannot be edited, only amended."))
    return version


@transaction.atomic
def record_update_draft(*, access: RecordAccess, content: dict) -> RecordVersion:
    version = _lock_draft(access)
    files = content.get("files")
    if files is None:
        files = decrypt_content(access.dek, version).get("files", [])
    version.content_ciphertext = encrypt_content(access.dek, version, {**content, "files": files})
    version.content_size = len(version.content_ciphertext)
    version.save(update_fields=["content_ciphertext", "content_size"])
    MedicalRecord.objects.filter(pk=access.record.pk).update(updated_at=timezone.now())
    audit(
        actor=access.user,
        action=AccessEvent.Action.EDIT,
        patient=access.record.patient,
        record=access.record,
        basis=access.basis,
    )
    return version


@transaction.atomic
def record_attach_file(*, access: RecordAccess, upload: SpooledUpload) -> RecordFile:
    """Attach an uploaded (already encrypted, spooled) file to a draft version."""
    version = _lock_draft(access)
    record_file = RecordFile(
        version=version,
        stream_id=upload.stream_id,
        media_type=upload.media_type,
        size=upload.size,
        ciphertext_size=upload.ciphertext_size,
        uploaded_by=access.user,
        position=version.files.count(),
    )
    record_file.key_wrapped = wrap_file_key(access.dek, upload.file_key, record_file)
    record_file.save()
    content = decrypt_content(access.dek, version)
    content.setdefault("files", []).append({"id": str(record_file.public_id), "name": upload.name})
    version.content_ciphertext = encrypt_content(access.dek, version, content)
    version.content_size = len(version.content_ciphertext)
    version.save(update_fields=["content_ciphertext", "content_size"])
    audit(
        actor=access.user,
        action=AccessEvent.Action.UPLOAD,
        patient=access.record.patient,
        record=access.record,
        basis=access.basis,
    )
    file_id = record_file.pk
    transaction.on_commit(lambda: _queue_ingest(file_id))
    return record_file


@transaction.atomic
def record_save_draft(
    *, access: RecordAccess, content: dict | None = None, uploads=(), finalize: bool = False
) -> MedicalRecord:
    """What the draft page submits, in one transaction: the form as shown, any files
    chosen, and (when signing) the finalisation, so what is signed is exactly what
    the author saw. ``content`` None keeps the saved text (a client that sends files only).
    """
    if content is not None:
        record_update_draft(access=access, content=content)
    for upload in uploads:
        record_attach_file(access=access, upload=upload)
    if finalize:
        return record_finalize(access=access)
    return access.record


@transaction.atomic
def record_discard_draft(*, access: RecordAccess) -> None:
    """The author throws a draft away: nobody can open it again, its files are dropped.

    The row stays (hidden by the default manager) so the audit trail keeps its target;
    every envelope of its data key is deleted, so its ciphertext can never be opened.
    """
    version = _lock_draft(access)
    record = access.record
    files = list(RecordFile.objects.filter(version__record=record))
    roots = [f.root_cid for f in files if f.root_cid]
    spooled = [spool_path(f.stream_id) for f in files if f.status == RecordFile.Status.SPOOLED]
    RecordFile.objects.filter(pk__in=[f.pk for f in files]).delete()
    WrappedKey.objects.filter(version__record=record).delete()
    RecordVersion.objects.filter(pk=version.pk).update(content_ciphertext=b"", content_size=0)
    now = timezone.now()
    MedicalRecord.all_objects.filter(pk=record.pk).update(discarded_at=now, updated_at=now)
    audit(
        actor=access.user, action=AccessEvent.Action.DISCARD, patient=record.patient, record=record, visit=record.visit
    )
    for root in roots:
        transaction.on_commit(lambda root=root: _queue_unpin(root))
    for path in spooled:
        transaction.on_commit(lambda path=path: _discard_spool(path))


def _queue_ingest(file_id: int) -> None:
    tasks.ingest_file.delay(file_id)


def queue_version_store(version_id: int) -> None:
    tasks.store_version.delay(version_id)


@transaction.atomic
def record_remove_file(*, access: RecordAccess, file_public_id) -> None:
    version = _lock_draft(access)
    record_file = version.files.filter(public_id=file_public_id).first()
    if record_file is None:
        raise ValidationError(_("No such file on this record."))
    content = decrypt_content(access.dek, version)
    content["files"] = [f for f in content.get("files", []) if f["id"] != str(file_public_id)]
    version.content_ciphertext = encrypt_content(access.dek, version, content)
    version.save(update_fields=["content_ciphertext"])
    root = record_file.root_cid
    spooled = spool_path(record_file.stream_id) if record_file.status == RecordFile.Status.SPOOLED else None
    record_file.delete()
    if root:
        transaction.on_commit(lambda: _queue_unpin(root))
    if spooled:
        transaction.on_commit(lambda: _discard_spool(spooled))
    audit(actor=access.user, action=AccessEvent.Action.EDIT, patient=access.record.patient, record=access.record)


def _discard_spool(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _queue_unpin(root: str) -> None:
    tasks.unpin.delay(root)


@transaction.atomic
def record_finalize(*, access: RecordAccess) -> MedicalRecord:
    """Sign and finalise: the version becomes immutable, is stored and anchored."""
    _require_draft_author(access)
    record = MedicalRecord.objects.select_for_update().get(pk=access.record.pk)
    if record.status != MedicalRecord.Status.DRAFT:
        raise RecordStateError(_("This record is already finalised."))
    if record.versions.filter(files__status=RecordFile.Status.FAILED).exists():
        raise RecordStateError(_("A file failed to upload; remove it or upload it again before finalising."))
    now = timezone.now()
    record.status = MedicalRecord.Status.FINAL
    record.updated_at = now
    record.save(update_fields=["status", "updated_at"])
    RecordVersion.objects.filter(pk=access.version.pk).update(storage=RecordVersion.Storage.PENDING, finalized_at=now)
    deliver_to_grantees(record)
    audit(actor=access.user, action=AccessEvent.Action.FINALIZE, patient=record.patient, record=record)
    version_id = access.version.pk
    transaction.on_commit(lambda: queue_version_store(version_id))
    return record


@transaction.atomic
def record_amend(*, access: RecordAccess, content: dict, reason: str) -> RecordVersion:
    """A new version replacing the current one; history keeps every version."""
    record = MedicalRecord.objects.select_for_update().get(pk=access.record.pk)
    if record.status == MedicalRecord.Status.DRAFT:
        raise RecordStateError(_("A draft is edited, not amended."))
    if access.basis == "patient" and record.kind != RecordKind.DOCUMENT:
        raise PermissionDenied(_("Only clinicians amend clinical records."))
    if access.basis not in ("patient", "author", "care-team"):
        raise PermissionDenied(_("You may not amend this record."))
    if not reason.strip():
        raise ValidationError(_("Give the reason for the amendment."))
    if access.version.pk != record.current_version_id:
        raise RecordStateError(_("The record changed while you were editing it; reload it and amend again."))
    if access.version.files.exclude(status=RecordFile.Status.STORED).exists():
        raise RecordStateError(_("The record's files are still being stored; amend it in a moment."))
    previous = access.version
    old_content = decrypt_content(access.dek, previous)
    number = record.versions.count() + 1
    new_content = {**content, "files": old_content.get("files", []), "amendment_reason": reason.strip()}
    version, dek = _new_version(
        record, author=access.user, content=new_content, number=number, origin=RecordVersion.Origin.AMENDMENT
    )
    # Carry the files forward: same ciphertext, file keys re-wrapped under the new key.
    old_files = list(previous.files.all())
    carried = []
    for old in old_files:
        clone = RecordFile(
            version=version,
            stream_id=old.stream_id,
            media_type=old.media_type,
            size=old.size,
            ciphertext_size=old.ciphertext_size,
            root_cid=old.root_cid,
            status=old.status,
            uploaded_by=old.uploaded_by,
            uploaded_at=old.uploaded_at,
            stored_at=old.stored_at,
            position=old.position,
        )
        clone.key_wrapped = wrap_file_key(dek, unwrap_file_key(access.dek, old), clone)
        carried.append(clone)
    RecordFile.objects.bulk_create(carried)
    # Keep file references in the new content pointing at the carried copies.
    ids = {str(old.public_id): str(new.public_id) for old, new in zip(old_files, carried, strict=True)}
    new_content["files"] = [{**f, "id": ids.get(f["id"], f["id"])} for f in new_content["files"]]
    version.content_ciphertext = encrypt_content(dek, version, new_content)
    version.content_size = len(version.content_ciphertext)
    version.storage = RecordVersion.Storage.PENDING
    version.finalized_at = timezone.now()
    version.save(update_fields=["content_ciphertext", "content_size", "storage", "finalized_at"])
    record.current_version = version
    record.status = MedicalRecord.Status.AMENDED
    record.updated_at = timezone.now()
    record.save(update_fields=["current_version", "status", "updated_at"])
    audit(actor=access.user, action=AccessEvent.Action.AMEND, patient=record.patient, record=record, basis=access.basis)
    version_id = version.pk
    transaction.on_commit(lambda: queue_version_store(version_id))
    return version


@transaction.atomic
def document_upload(*, patient, title: str, description: str, upload: SpooledUpload) -> MedicalRecord:
    """A patient's own document: a record with one file, finalised once stored."""
    record = record_create(
        patient=patient, author=patient, kind=RecordKind.DOCUMENT, content={"title": title, "description": description}
    )
    access = record_get_for_user(patient, record.public_id, action=AccessEvent.Action.UPLOAD)
    record_attach_file(access=access, upload=upload)
    record_finalize(access=record_get_for_user(patient, record.public_id, action=AccessEvent.Action.FINALIZE))
    return record


# -- grantees whose scope a record enters ------------------------------------------------------
