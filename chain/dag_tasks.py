"""The store worker's content-store tasks, and the worker hooks that hold the store.

Every task is named ``store.…`` so it is routed to the store worker, the one
process that holds the DAG store's primary instance (DESIGN section 3). Tasks
take paths and CID strings, call one function of :mod:`chain.dag_services`,
and return its JSON-ready dict through the result backend.

Idempotence. Adding or importing the same bytes again stores no new block (the
store is content-addressed) but, by design, adds a pin reference: each caller
holds one per call. So a task that changes a pin count must not be applied
twice for one message: a message redelivered after its
result was stored (the worker died before acknowledging it) returns that result
instead of running again. A death between the RocksDB write and the stored
result is not covered (see docs/architecture.md, "Content store").

The store worker opens the primary as soon as it is ready and keeps it until it
shuts down, so "the lock is held" reliably means "the store worker is running"
to a ``dag`` command. If a command held the lock at that moment, the first task
that needs the store retries until the command lets go.

Time limits are given as both soft and hard: the global soft limit would
otherwise cut a large ingest short. (The threads pool does not enforce them;
they apply if the worker runs another pool.)
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from chain import dag_services, stores
from chain.core.blockstore import BlockStore, StoreError
from chain.core.errors import CodecError, IntegrityError, NotFoundError

logger = logging.getLogger(__name__)

LONG = {"soft_time_limit": 59 * 60, "time_limit": 60 * 60}
"""Ingest, import and gc: a multi-gigabyte file, or a sweep of the whole store."""
SHORT = {"soft_time_limit": 110, "time_limit": 120}
"""Pin and unpin: a walk of one DAG's interior nodes."""
REFUSALS = (CodecError, IntegrityError, NotFoundError, FileNotFoundError)
"""Bad input rather than a fault: logged without a traceback, returned to the caller."""
LOCKED_RETRY_SECONDS = 2
LOCKED_RETRIES = 60


def _writer(task: Task) -> BlockStore:
    try:
        return stores.dag_writer()
    except stores.DagStoreLocked as exc:
        # A `dag` command opened the store while this worker was starting; it lets go soon.
        raise task.retry(exc=exc, countdown=LOCKED_RETRY_SECONDS, max_retries=LOCKED_RETRIES) from None


def _stored_result(task: Task) -> dict | None:
    """The result of an earlier run of this very message, if one was stored."""
    if task.request.is_eager or not task.request.id:
        return None
    try:
        previous = task.AsyncResult(task.request.id)
        if previous.state == "SUCCESS":
            return previous.result
    except Exception:  # an unreachable result backend must not stop the store
        logger.warning("could not look up an earlier result of %s", task.request.id, exc_info=True)
    return None


@shared_task(name="store.dag_add_path", bind=True, throws=REFUSALS, **LONG)
def dag_add_path(self: Task, path: str, chunk_size: int | None = None, max_links: int | None = None) -> dict:
    """Ingest the file at ``path`` (already on this machine's disk) and pin its root."""
    done = _stored_result(self)
    if done is not None:
        return done
    return dag_services.dag_add_path(store=_writer(self), path=path, chunk_size=chunk_size, max_links=max_links)


@shared_task(name="store.dag_import_car", bind=True, throws=REFUSALS, **LONG)
def dag_import_car(self: Task, path: str, root: str | None = None, growing: bool = False) -> dict:
    """Import the CAR file at ``path`` and pin its roots (all or nothing); ``root``: the only root accepted;
    ``growing``: still being fetched, imported as it arrives."""
    done = _stored_result(self)
    if done is not None:
        return done
    return dag_services.dag_import_car(store=_writer(self), path=path, root=root, growing=growing)


@shared_task(name="store.dag_gc", bind=True, throws=REFUSALS, **LONG)
def dag_gc(self: Task) -> dict:
    return dag_services.dag_gc(store=_writer(self))


@shared_task(name="store.dag_pin", bind=True, throws=REFUSALS, **SHORT)
def dag_pin(self: Task, cid: str) -> dict:
    done = _stored_result(self)
    if done is not None:
        return done
    return dag_services.dag_pin(store=_writer(self), cid=cid)


@shared_task(name="store.dag_unpin", bind=True, throws=REFUSALS, **SHORT)
def dag_unpin(self: Task, cid: str) -> dict:
    done = _stored_result(self)
    if done is not None:
        return done
    return dag_services.dag_unpin(store=_writer(self), cid=cid)


# -- worker hooks ------------------------------------------------------------------------------
def _open_on_ready(sender: Any, **kwargs: Any) -> None:
    """The worker that consumes ``store`` takes the primary now (see the module docstring)."""
    if "store" not in sender.app.amqp.queues.consume_from:
        return
    try:
        stores.dag_writer()
    except stores.DagStoreLocked:
        logger.warning("the DAG store is held by another process; tasks will retry until it is free")
    except StoreError:
        logger.exception("cannot open the DAG store")


def _close_on_shutdown(**kwargs: Any) -> None:
    stores.close_dag_stores()


worker_ready.connect(_open_on_ready, weak=False)
worker_shutdown.connect(_close_on_shutdown, weak=False)
worker_process_shutdown.connect(_close_on_shutdown, weak=False)
