"""The footprint's background work: put access events on chain in batches."""

from __future__ import annotations

import logging

from celery import shared_task

from records.footprint.forwarding import accesses_forward
from records.footprint.services import BATCH_SIZE, access_events_log

log = logging.getLogger(__name__)


@shared_task(name="store.records_log_accesses", soft_time_limit=8, time_limit=10, ignore_result=True)
def log_accesses(max_batches: int = 20) -> int:
    """Put unlogged access events on chain, oldest first, one batch transaction per 500.

    Beat runs it every 10 s; the rows are the outbox, so a lost or expired
    message costs nothing: the next run takes the same rows.
    """
    logged = 0
    for _ in range(max_batches):
        count, _cid = access_events_log()
        logged += count
        if count < BATCH_SIZE:
            break
    if logged:
        log.info("logged %d access events on chain", logged)
    return logged


@shared_task(name="default.records_forward_accesses", soft_time_limit=60, time_limit=70, ignore_result=True)
def forward_accesses() -> dict:
    """Send logged events about other nodes' patients to their home nodes (records/footprint/forwarding.py)."""
    from chain.cluster import in_consortium

    if not in_consortium():
        return {}
    return accesses_forward()
