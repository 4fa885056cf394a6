"""Record tasks. ``store.*`` run on the store worker (the RocksDB writer)."""

from __future__ import annotations

import logging
import os
import time

from celery import shared_task
from django.conf import settings

from records.clinical.tasks import ingest_file, store_version

log = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="store.records_rekey",
    soft_time_limit=3500,
    time_limit=3600,
    ignore_result=True,
    max_retries=120,
)
def rekey(self, job_id: int) -> str:
    """Re-key the records of a revoked grant (resumable: finished records are skipped)."""
    from records.models import RecordVersion
    from records.rekey import rekey_job_run

    outcome = rekey_job_run(job_id)
    # Re-keyed versions waiting for their predecessor's anchor to be sealed.
    for version_id in RecordVersion.objects.filter(
        storage=RecordVersion.Storage.PENDING, rekeyed_by__job_id=job_id
    ).values_list("pk", flat=True):
        store_version.delay(version_id)
    if outcome == "waiting":
        # A record's current version is still being stored: come back shortly.
        raise self.retry(countdown=max(5.0, settings.CHAIN_BLOCK_INTERVAL * 2))
    return outcome


@shared_task(name="default.records_redrive", soft_time_limit=60, time_limit=70, ignore_result=True)
def redrive() -> dict:
    """Re-queue spooled files and pending versions whose messages were lost; clean stale partial uploads."""
    from records.breakglass import break_glass_redrive
    from records.clinical.storage import pending_too_long
    from records.rekey import rekey_jobs_stale
    from records.sharing import grants_redrive

    grants_redrive()
    break_glass_redrive()
    job_ids = list(rekey_jobs_stale().values_list("pk", flat=True)[:100])
    for job_id in job_ids:
        rekey.delay(job_id)
    files, versions = pending_too_long()
    file_ids = list(files.values_list("pk", flat=True)[:500])
    version_ids = list(versions.values_list("pk", flat=True)[:500])
    for file_id in file_ids:
        ingest_file.delay(file_id)
    for version_id in version_ids:
        store_version.delay(version_id)
    removed = 0
    cutoff = time.time() - 3600
    if os.path.isdir(settings.SPOOL_DIR):
        for entry in os.scandir(settings.SPOOL_DIR):
            if entry.name.endswith(".part") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    if job_ids:
        log.info("redrive: %d re-keying jobs re-queued", len(job_ids))
    if file_ids or version_ids or removed:
        log.info(
            "redrive: %d files, %d versions re-queued; %d stale partial uploads removed",
            len(file_ids),
            len(version_ids),
            removed,
        )
    return {
        "files": len(file_ids),
        "versions": len(version_ids),
        "partials_removed": removed,
        "rekey_jobs": len(job_ids),
    }


@shared_task(name="store.records_log_accesses", soft_time_limit=8, time_limit=10, ignore_result=True)
def log_accesses(max_batches: int = 20) -> int:
    """Put unlogged access events on chain, oldest first, one batch transaction per 500.

    Beat runs it every 10 s; the rows are the outbox, so a lost or expired
    message costs nothing: the next run takes the same rows.
    """
    from records.footprint.services import BATCH_SIZE, access_events_log

    logged = 0
    for _ in range(max_batches):
        count, _cid = access_events_log()
        logged += count
        if count < BATCH_SIZE:
            break
    if logged:
        log.info("logged %d access events on chain", logged)
    return logged
