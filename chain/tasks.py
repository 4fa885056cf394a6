"""Node tasks. Names starting with ``store.`` run on the store worker."""

from __future__ import annotations

import socket

from celery import shared_task

from chain.services import heartbeat_record


@shared_task(name="store.heartbeat", ignore_result=True, soft_time_limit=25, time_limit=30)
def store_heartbeat() -> None:
    heartbeat_record(queue="store", hostname=socket.gethostname())


@shared_task(name="default.heartbeat", ignore_result=True, soft_time_limit=25, time_limit=30)
def default_heartbeat() -> None:
    heartbeat_record(queue="default", hostname=socket.gethostname())
