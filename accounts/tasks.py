"""The accounts app's background work: the consortium directory (``accounts.directory``)."""

from __future__ import annotations

from celery import shared_task

from accounts.directory import directory_publish, directory_sync


@shared_task(name="default.directory_publish", soft_time_limit=30, time_limit=40, ignore_result=True)
def publish() -> int:
    """Submit the listings this node owes (its institution, its verified staff) once the chain can take them."""
    return directory_publish()


@shared_task(name="default.directory_sync", soft_time_limit=120, time_limit=130, ignore_result=True)
def sync() -> int:
    """Repair the rows of other nodes' institutions and staff from the chain's listings (after a missed hook)."""
    return directory_sync()
