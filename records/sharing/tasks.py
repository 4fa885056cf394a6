"""Sharing's background work on the store worker: re-keying the records of a revoked grant."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from records.clinical.tasks import store_version
from records.models import RecordVersion
from records.sharing.rekey import rekey_job_run


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
