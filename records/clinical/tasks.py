"""The chart's background work on the store worker: ingest files, store and anchor versions, unpin."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from chain.core.cid import CID
from chain.stores import dag_writer
from records.clinical.storage import early_ingest_drop, file_ingest, upload_ingest_early, version_store


@shared_task(name="store.records_ingest_file", soft_time_limit=3500, time_limit=3600, ignore_result=True)
def ingest_file(file_id: int) -> str:
    return file_ingest(file_id)


# Sent by name from the upload handler (``records.clinical.uploads``), which sits below this module.
@shared_task(name="store.records_ingest_upload", soft_time_limit=3500, time_limit=3600, ignore_result=True)
def ingest_upload(stream_id: str) -> str:
    return upload_ingest_early(stream_id)


@shared_task(name="store.records_drop_early_ingest", soft_time_limit=60, time_limit=70, ignore_result=True)
def drop_early_ingest(early_id: int) -> None:
    early_ingest_drop(early_id)


@shared_task(
    bind=True,
    name="store.records_store_version",
    soft_time_limit=600,
    time_limit=620,
    ignore_result=True,
    max_retries=60,
)
def store_version(self, version_id: int) -> str:
    outcome = version_store(version_id)
    if outcome == "waiting-previous":
        # The previous version's anchor is not sealed yet (about one block interval).
        raise self.retry(countdown=max(1.0, settings.CHAIN_BLOCK_INTERVAL))
    return outcome


@shared_task(name="store.records_unpin", soft_time_limit=60, time_limit=70, ignore_result=True)
def unpin(root: str) -> None:
    store = dag_writer()
    if store.pin_count(CID.decode(root)):
        store.unpin(CID.decode(root))
