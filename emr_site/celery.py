"""The Celery app: queue ``store`` (the single RocksDB writer) and ``default``.

DESIGN section 3: the store worker (one process, threads pool) is the only
writer of RocksDB, so every task that writes the DAG or the chain is routed to
``store``; CPU work that needs no RocksDB write goes to ``default``.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emr_site.settings")

app = Celery("emr_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("store"))
app.conf.task_default_queue = "default"
app.conf.task_routes = {"store.*": {"queue": "store"}}
app.conf.broker_connection_retry_on_startup = True
app.autodiscover_tasks()


@app.task(name="default.ping")
def ping() -> str:
    """Round-trip check used by tests and /healthz."""
    return "pong"


@app.task(name="store.ping")
def store_ping() -> str:
    return "pong"


@worker_ready.connect
def _freeze_on_start(**kwargs) -> None:
    """Once its tasks are loaded, a worker freezes what it holds (``emr_site.startup``): a seal or an
    upload is not stalled by a full garbage collection walking Django. The project's workers run
    the threads pool, so this is the process that runs the tasks."""
    from emr_site.startup import freeze_loaded_objects

    freeze_loaded_objects()
