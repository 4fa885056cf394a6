"""Node tasks. Names starting with ``store.`` run on the store worker."""

from __future__ import annotations

import logging
import socket

from celery import shared_task
from celery.signals import worker_ready
from django.db import DatabaseError

from chain import dag_tasks  # noqa: F401 - the store worker's content-store tasks
from chain.ledger_tasks import chain_seal_task, chain_validate_recent_task  # noqa: F401 - the worker finds them here
from chain.services import heartbeat_record

logger = logging.getLogger(__name__)


@shared_task(name="store.heartbeat", ignore_result=True, soft_time_limit=25, time_limit=30)
def store_heartbeat() -> None:
    heartbeat_record(queue="store", hostname=socket.gethostname())


@shared_task(name="default.heartbeat", ignore_result=True, soft_time_limit=25, time_limit=30)
def default_heartbeat() -> None:
    heartbeat_record(queue="default", hostname=socket.gethostname())


@shared_task(name="default.replicate", ignore_result=True, soft_time_limit=240, time_limit=300)
def replicate() -> None:
    """A consortium node keeps its share of the DAG replicas (chain/replication.py); a single node has none."""
    from chain.cluster import in_consortium
    from chain.replication import audit, plan, reconcile, sweep_spool

    if not in_consortium():
        return
    sweep_spool()
    while plan():
        pass
    audit()
    done = reconcile()
    if done:
        logger.info("replication: %s", done)


@worker_ready.connect
def _heartbeat_on_start(sender=None, **kwargs) -> None:
    """Report at once when a worker starts, not only after the first beat interval."""
    try:
        queues = list(sender.app.amqp.queues.consume_from or ())
    except AttributeError:
        return
    for queue in queues:
        if queue in ("store", "default"):
            try:
                heartbeat_record(queue=queue, hostname=socket.gethostname())
            except DatabaseError as exc:  # an unmigrated database must not stop the worker
                logger.warning("could not record the %s worker's heartbeat: %s", queue, exc)
