"""Care across nodes, in the background: record deliveries to patients' home nodes."""

from __future__ import annotations

from celery import shared_task

from records.consortium.deliveries import deliveries_send


@shared_task(name="default.records_deliver", soft_time_limit=120, time_limit=130, ignore_result=True)
def deliver() -> dict:
    """Send the record deliveries that are due (queued when a version is anchored, and by the beat)."""
    return deliveries_send()
