"""The records app's tasks: each room's task module, and the redrive that sweeps all of them.

``store.*`` tasks run on the store worker (the RocksDB writer). The rooms'
tasks live beside their work (``records.clinical.tasks``,
``records.sharing.tasks``, ``records.footprint.tasks``); ``redrive`` re-queues
whatever any room's outbox rows show as waiting too long.
"""

from __future__ import annotations

import logging
import os
import time

from celery import shared_task
from django.conf import settings

from records.clinical.storage import early_ingests_unclaimed, pending_too_long
from records.clinical.tasks import drop_early_ingest, ingest_file, ingest_upload, store_version
from records.consortium import tasks as consortium_tasks
from records.footprint import tasks as footprint_tasks
from records.sharing.breakglass import break_glass_redrive
from records.sharing.emergency import emergency_grants_end
from records.sharing.grants import grants_redrive
from records.sharing.rekey import rekey_jobs_stale
from records.sharing.tasks import rekey

# Celery's autodiscovery imports this module only: the rooms' task modules
# register their tasks by being imported here.
__all__ = [
    "consortium_tasks",
    "drop_early_ingest",
    "footprint_tasks",
    "ingest_file",
    "ingest_upload",
    "redrive",
    "rekey",
    "store_version",
]

log = logging.getLogger(__name__)


@shared_task(name="default.records_redrive", soft_time_limit=60, time_limit=70, ignore_result=True)
def redrive() -> dict:
    """Re-queue spooled files and pending versions whose messages were lost; clean stale partial uploads.

    Early adds of uploads that no record file took (refused after they arrived) are let go.
    """

    grants_redrive()
    break_glass_redrive()
    emergency_grants_end()  # emergency grants of sessions that ended: revoked, and so re-keyed
    job_ids = list(rekey_jobs_stale().values_list("pk", flat=True)[:100])
    for job_id in job_ids:
        rekey.delay(job_id)
    early_ids = list(early_ingests_unclaimed().values_list("pk", flat=True)[:500])
    for early_id in early_ids:
        drop_early_ingest.delay(early_id)
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
            # an upload cut off, an early add's link or an upload's end marker left by a killed worker
            if entry.name.endswith((".part", ".early", ".end")) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    if job_ids:
        log.info("redrive: %d re-keying jobs re-queued", len(job_ids))
    if file_ids or version_ids or removed or early_ids:
        log.info(
            "redrive: %d files, %d versions re-queued; %d stale partial uploads removed; %d unclaimed early adds",
            len(file_ids),
            len(version_ids),
            removed,
            len(early_ids),
        )
    return {
        "files": len(file_ids),
        "versions": len(version_ids),
        "partials_removed": removed,
        "rekey_jobs": len(job_ids),
        "early_adds_dropped": len(early_ids),
    }
