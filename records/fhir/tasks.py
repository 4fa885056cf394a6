"""FHIR Bulk Data's background work: run an export job, and the sweep that re-queues and expires them.

Registered through ``CELERY_IMPORTS`` (settings): ``records.tasks`` sits
beside ``records.fhir`` in the import layers and may not import it. The rows
are the outbox (``records.fhir.bulk``): a lost message or a killed worker
costs a delay, never the job.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from records.fhir.bulk import export_run, exports_sweep

log = logging.getLogger(__name__)


@shared_task(name="default.fhir_bulk_export", soft_time_limit=25 * 60, time_limit=26 * 60, ignore_result=True)
def bulk_export_run(job_id: int) -> str:
    """Export the job's remaining records; each step is committed, so a re-run carries on where it stopped."""
    try:
        return export_run(job_id)
    except SoftTimeLimitExceeded:
        bulk_export_run.delay(job_id)  # a long export goes on in a fresh task from its cursor
        return "continued"


@shared_task(name="default.fhir_bulk_sweep", soft_time_limit=60, time_limit=70, ignore_result=True)
def bulk_export_sweep() -> dict:
    """Re-queue export jobs that lost their worker; remove expired jobs and their files."""
    result = exports_sweep()
    for job_id in result["stale"]:
        bulk_export_run.delay(job_id)
    if any(result.values()):
        log.info(
            "bulk exports: %d re-queued, %d failed, %d expired, %d orphaned folders removed",
            len(result["stale"]),
            result["failed"],
            result["expired"],
            result["orphans_removed"],
        )
    return {**result, "stale": len(result["stale"])}
