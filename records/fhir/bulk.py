"""FHIR Bulk Data ``$export`` of an institution's own records (Bulk Data Access IG, the async pattern).

A cleared institution administrator (verified, 2FA on: the rule that lets
them review break-glass sessions) asks for the signed records authored at
their institution, as NDJSON files of R4 resources. The work is a
``BulkExport`` row, its outbox: each step decides, audits and decrypts the
next records through ``records.policy`` (the institution-export rule, in
chunks), writes one encrypted file per resource type, then advances the row's
cursor in the same transaction as the steps' audit rows. A worker killed
mid-step leaves the cursor where it was: the sweep re-queues a job nobody
touched for ``STALE_AFTER``, and the step rewrites the same file names, so
running a job twice exports each record once.

Files are never plaintext on disk: each is a ``chain.core.stream`` ciphertext
under the job's own key (wrapped by the node KEK, bound to the job and the
file's name). A download opens it only for the administrator who asked,
while they are still cleared, and first writes one footprint row per record
(and per patient) it holds, as a read does. Files and rows go after
``BULK_EXPORT_HOURS``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from accounts.models import User
from chain.core import crypto, stream
from chain.kek import node_kek
from records import audit
from records.fhir import mapping
from records.fhir.resources import chunk_resources
from records.models import AccessEvent, BulkExport, MedicalRecord, RecordKind, Visit
from records.sharing.breakglass import reviewer_cleared

RECORD_TYPES: dict[str, list[str]] = {
    "MedicationRequest": [RecordKind.PRESCRIPTION],
    "DiagnosticReport": [RecordKind.LAB_REPORT, RecordKind.PATHOLOGY],
    "Observation": [RecordKind.LAB_REPORT],
    "ImagingStudy": [RecordKind.IMAGING],
    "DocumentReference": list(RecordKind.values),  # notes and documents, and every record's files
    "Provenance": list(RecordKind.values),
}
EXPORT_TYPES = ("Patient", "Encounter", *RECORD_TYPES)
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
STEP = 200  # records a step exports (one file per resource type)
CHUNK = 50  # records decided and audited together
STALE_AFTER = timedelta(minutes=10)  # a running job untouched this long has lost its worker
MAX_ATTEMPTS = 5
READ_SIZE = 1 << 16


class ExportRefused(Exception):
    """A kick-off this server does not accept; the message is for the caller."""


@dataclass(frozen=True)
class ExportRequest:
    types: tuple[str, ...]
    since: datetime | None


def parse_request(params: Mapping[str, str]) -> ExportRequest:
    """The kick-off's parameters (``_outputFormat``, ``_type``, ``_since``), or ``ExportRefused``."""
    unknown = sorted(k for k in params if k not in ("_outputFormat", "_type", "_since"))
    if unknown:
        raise ExportRefused(_("This server does not support the parameter %(name)s.") % {"name": unknown[0]})
    output_format = params.get("_outputFormat")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ExportRefused(_("Exports are written as application/fhir+ndjson only."))
    types: tuple[str, ...] = EXPORT_TYPES
    if params.get("_type") is not None:
        asked = [t.strip() for t in params["_type"].split(",")]
        wrong = [t for t in asked if t not in EXPORT_TYPES]
        if wrong or not asked:
            raise ExportRefused(
                _("This server does not export resources of type %(type)s.") % {"type": (wrong or [""])[0]}
            )
        types = tuple(t for t in EXPORT_TYPES if t in asked)
    since = None
    if params.get("_since") is not None:
        try:
            since = parse_datetime(params["_since"])
        except ValueError:
            since = None
        if since is None or since.tzinfo is None:
            raise ExportRefused(_("_since is an instant with its time zone, such as 2026-01-31T08:00:00+08:00."))
    return ExportRequest(types=types, since=since)


# -- the job -------------------------------------------------------------------------------------------
def export_start(*, user, asked: ExportRequest, request_url: str, client: str) -> BulkExport:
    """A new export job for the administrator's institution, queued once the transaction commits."""
    from records.fhir.tasks import bulk_export_run  # the task calls back into this module

    if not reviewer_cleared(user) or user.institution_id is None:
        raise PermissionDenied(_("Exports are made by your institution's verified administrators, with 2FA on."))
    with transaction.atomic():
        job = BulkExport(
            institution_id=user.institution_id,
            requested_by=user,
            request_url=request_url[:1000],
            types=list(asked.types),
            since=asked.since,
            client=client[:80],
        )
        job.key_wrapped = crypto.wrap_private_key(node_kek(), stream.new_data_key(), owner=_key_owner(job))
        job.total = _records(job).count() if _record_types(job) else 0
        job.save()
        bulk_export_run.delay_on_commit(job.pk)
    return job


def export_run(job_id: int) -> str:
    """Run the job's remaining steps; idempotent (a finished, failed or cancelled job is left alone)."""
    running = BulkExport.objects.filter(pk=job_id, status=BulkExport.Status.RUNNING)
    if not running.update(attempts=F("attempts") + 1, updated_at=timezone.now()):
        return "gone"
    try:
        while export_step(job_id):
            pass
    except Exception:
        job = BulkExport.objects.filter(pk=job_id).first()
        if job is not None and job.attempts >= MAX_ATTEMPTS:
            # The reason stays in the worker's log; the row says only that it failed (nothing clinical).
            job.status = BulkExport.Status.FAILED
            job.error = f"failed {job.attempts} times"
            job.finished_at = timezone.now()
            job.expires_at = job.finished_at + timedelta(hours=settings.BULK_EXPORT_HOURS)
            job.save(update_fields=["status", "error", "finished_at", "expires_at"])
        raise
    return "done"


def export_step(job_id: int) -> bool:
    """Export the next ``STEP`` records (or, after the last one, patients and encounters); True while more remain."""
    with transaction.atomic():
        job = BulkExport.objects.select_for_update().filter(pk=job_id, status=BulkExport.Status.RUNNING).first()
        if job is None:
            return False
        admin = job.requested_by
        with audit.calling_client(job.client):
            if _record_types(job):
                batch = list(
                    _records(job).filter(pk__gt=job.cursor).order_by("pk").values_list("pk", "public_id")[:STEP]
                )
            else:
                batch = []
            if batch:
                outputs = _export_records(job, admin, batch)
                job.cursor = batch[-1][0]
                job.done += len(batch)
                job.outputs = [*job.outputs, *outputs]
                job.updated_at = timezone.now()
                job.attempts = 1  # counts the runs since the last progress: a step that keeps failing ends the job
                job.save(update_fields=["cursor", "done", "outputs", "updated_at", "attempts"])
                return True
            job.outputs = [*job.outputs, *_export_people(job, admin)]
        now = timezone.now()
        job.status = BulkExport.Status.DONE
        job.done = job.total
        job.updated_at = job.finished_at = now
        job.expires_at = now + timedelta(hours=settings.BULK_EXPORT_HOURS)
        job.save(update_fields=["outputs", "status", "done", "updated_at", "finished_at", "expires_at"])
    return False


def _records(job: BulkExport, types: Sequence[str] | None = None):
    """The records the job exports: signed, authored at the institution before the kick-off, of the kinds asked."""
    kinds = {k for t in (_record_types(job) if types is None else types) for k in RECORD_TYPES[t]}
    rows = MedicalRecord.objects.filter(
        institution_id=job.institution_id, created_at__lte=job.created_at, kind__in=kinds
    ).exclude(status=MedicalRecord.Status.DRAFT)
    return rows.filter(updated_at__gte=job.since) if job.since else rows


def _record_types(job: BulkExport) -> list[str]:
    return [t for t in job.types if t in RECORD_TYPES]


def _export_records(job: BulkExport, admin, batch: Sequence[tuple[int, object]]) -> list[dict]:
    detail = f"FHIR bulk export {job.public_id}"
    by_type: dict[str, list[dict]] = {}
    holders: dict[str, tuple[set[int], set[int]]] = {}
    for start in range(0, len(batch), CHUNK):
        ids = [public_id for _pk, public_id in batch[start : start + CHUNK]]
        for access, resources in chunk_resources(admin, ids, detail=detail, institution_export=True):
            for resource in resources:
                kind = resource["resourceType"]
                if kind not in job.types:
                    continue
                by_type.setdefault(kind, []).append(resource)
                records, patients = holders.setdefault(kind, (set(), set()))
                records.add(access.record.pk)
                patients.add(access.record.patient_id)
    prefix = f"r{batch[0][0]:012d}"
    outputs = []
    for kind, resources in by_type.items():
        name = f"{prefix}-{kind}.ndjson"
        _write(job, name, resources)
        records, patients = holders[kind]
        outputs.append(
            {
                "type": kind,
                "name": name,
                "count": len(resources),
                "records": sorted(records),
                "patients": sorted(patients),
            }
        )
    return outputs


def _export_people(job: BulkExport, admin) -> list[dict]:
    """The patients of the exported records and the institution's encounters (no record decrypted)."""
    detail = f"FHIR bulk export {job.public_id}"
    outputs, rows = [], []
    if "Patient" in job.types:
        ids = _records(job, list(RECORD_TYPES)).values("patient_id")
        patients = list(User.objects.filter(pk__in=ids).order_by("pk"))
        if patients:
            _write(job, "people-Patient.ndjson", [mapping.patient(p) for p in patients])
            pks = [p.pk for p in patients]
            outputs.append(
                {"type": "Patient", "name": "people-Patient.ndjson", "count": len(pks), "records": [], "patients": pks}
            )
            rows += [_chart_row(admin, p, detail) for p in patients]
    if "Encounter" in job.types:
        visits = Visit.objects.filter(institution_id=job.institution_id, opened_at__lte=job.created_at)
        if job.since:
            visits = visits.filter(opened_at__gte=job.since)
        visits = list(visits.select_related("patient", "institution").order_by("pk"))
        if visits:
            _write(job, "people-Encounter.ndjson", [mapping.encounter(v) for v in visits])
            pks = sorted({v.patient_id for v in visits})
            outputs.append(
                {
                    "type": "Encounter",
                    "name": "people-Encounter.ndjson",
                    "count": len(visits),
                    "records": [],
                    "patients": pks,
                }
            )
            seen = {}
            for visit in visits:
                seen.setdefault(visit.patient_id, visit.patient)
            rows += [_chart_row(admin, p, detail) for p in seen.values()]
    AccessEvent.objects.bulk_create(rows, batch_size=500)
    return outputs


def _chart_row(admin, patient, detail: str) -> AccessEvent:
    return audit.audit_row(
        actor=admin, action=AccessEvent.Action.VIEW_CHART, patient=patient, basis="institution", detail=detail
    )


# -- the files -----------------------------------------------------------------------------------------
def export_dir(job: BulkExport) -> Path:
    return Path(settings.BULK_EXPORT_DIR) / str(job.public_id)


def _key_owner(job: BulkExport) -> str:
    return f"bulk-export:{job.public_id}"


def _file_key(job: BulkExport) -> bytes:
    return crypto.unwrap_private_key(node_kek(), bytes(job.key_wrapped), owner=_key_owner(job))


def _associated_data(job: BulkExport, name: str) -> bytes:
    """Binds a file to its job and name: moved or renamed, it does not open."""
    return f"yilian/bulk-export/v1/{job.public_id}/{name}".encode()


def _write(job: BulkExport, name: str, resources: list[dict]) -> None:
    """One NDJSON file, encrypted as it is written; replaced whole (a re-run step writes the same name)."""
    folder = export_dir(job)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    encryptor = stream.Encryptor(_file_key(job), associated_data=_associated_data(job, name))
    partial = folder / f".{name}.part"
    with open(partial, "wb") as out:
        out.write(encryptor.header)
        for resource in resources:
            out.write(encryptor.update(json.dumps(resource, ensure_ascii=False).encode() + b"\n"))
        out.write(encryptor.finalize())
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, folder / name)


def job_for_user(user, job_id) -> BulkExport:
    """The user's own export job; anyone else's (or none) is ``BulkExport.DoesNotExist``."""
    if not getattr(user, "is_authenticated", False):
        raise BulkExport.DoesNotExist
    return BulkExport.objects.get(public_id=job_id, requested_by_id=user.pk)


def export_file(*, user, job: BulkExport, name: str) -> Iterator[bytes]:
    """The plaintext of one output file, decrypted piece by piece; its readings recorded first.

    Only the administrator who asked, while still cleared; each record the file
    holds gets a footprint row (download, on the institution's basis), and so
    does each patient of a Patient or Encounter file, in one bulk insert.
    """
    if job.requested_by_id != user.pk or not reviewer_cleared(user):
        raise PermissionDenied(_("Only the administrator who asked for this export may download it."))
    entry = next((o for o in job.outputs if o["name"] == name), None)
    if job.status != BulkExport.Status.DONE or entry is None:
        raise FileNotFoundError(name)
    path = export_dir(job) / name
    if not path.is_file():
        raise FileNotFoundError(name)
    detail = f"FHIR bulk export {job.public_id}, {name}"
    rows = [
        audit.audit_row(
            actor=user,
            action=AccessEvent.Action.DOWNLOAD,
            patient=record.patient,
            record=record,
            visit=record.visit,
            basis="institution",
            detail=detail,
        )
        for record in MedicalRecord.objects.select_related("patient", "visit").filter(pk__in=entry["records"])
    ]
    if not entry["records"]:
        rows += [
            audit.audit_row(
                actor=user, action=AccessEvent.Action.DOWNLOAD, patient=p, basis="institution", detail=detail
            )
            for p in User.objects.filter(pk__in=entry["patients"])
        ]
    with transaction.atomic():
        AccessEvent.objects.bulk_create(rows, batch_size=500)
    return _decrypted(_file_key(job), path, _associated_data(job, name))


def _decrypted(key: bytes, path: Path, associated_data: bytes) -> Iterator[bytes]:
    decryptor = stream.Decryptor(key, associated_data=associated_data)
    with open(path, "rb") as source:
        while piece := source.read(READ_SIZE):
            plain = decryptor.update(piece)
            if plain:
                yield plain
    yield decryptor.finalize()


# -- cancelling and sweeping -----------------------------------------------------------------------------
def export_cancel(*, user, job: BulkExport) -> None:
    """Cancel (if running) and delete the job and its files: the row now, the files once that commits."""
    if job.requested_by_id != user.pk:
        raise PermissionDenied(_("Only the administrator who asked for this export may cancel it."))
    folder = export_dir(job)
    with transaction.atomic():
        BulkExport.objects.select_for_update().filter(pk=job.pk).delete()
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))


def exports_sweep(*, now: datetime | None = None) -> dict:
    """Remove expired jobs and their files, and files of jobs that are gone; return the stale running jobs' ids.

    A running job nobody touched for ``STALE_AFTER`` lost its worker: the caller
    re-queues it (the run is idempotent), up to ``MAX_ATTEMPTS`` runs.
    """
    now = now or timezone.now()
    expired = list(BulkExport.objects.filter(expires_at__lte=now).values_list("pk", "public_id"))
    for pk, public_id in expired:
        with transaction.atomic():
            BulkExport.objects.filter(pk=pk).delete()
        shutil.rmtree(Path(settings.BULK_EXPORT_DIR) / str(public_id), ignore_errors=True)
    orphans = 0
    root = Path(settings.BULK_EXPORT_DIR)
    if root.is_dir():
        known = {str(p) for p in BulkExport.objects.values_list("public_id", flat=True)}
        cutoff = time.time() - STALE_AFTER.total_seconds()
        for entry in os.scandir(root):
            if entry.name not in known and entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                orphans += 1
    stale = BulkExport.objects.filter(
        status=BulkExport.Status.RUNNING, updated_at__lt=now - STALE_AFTER, attempts__lt=MAX_ATTEMPTS
    )
    given_up = BulkExport.objects.filter(
        status=BulkExport.Status.RUNNING, updated_at__lt=now - STALE_AFTER, attempts__gte=MAX_ATTEMPTS
    ).update(
        status=BulkExport.Status.FAILED,
        error=f"lost its worker {MAX_ATTEMPTS} times",
        finished_at=now,
        expires_at=now + timedelta(hours=settings.BULK_EXPORT_HOURS),
    )
    return {
        "expired": len(expired),
        "orphans_removed": orphans,
        "failed": given_up,
        "stale": list(stale.values_list("pk", flat=True)[:100]),
    }


def manifest(job: BulkExport, *, base: str) -> dict:
    """The Bulk Data completion manifest: where each file is, and how many resources it holds."""
    return {
        "transactionTime": job.created_at.isoformat(),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [
            {"type": o["type"], "url": f"{base}/$export-file/{job.public_id}/{o['name']}", "count": o["count"]}
            for o in job.outputs
        ],
        "error": [],
    }
