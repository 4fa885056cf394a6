"""Process-level handles on the node's DAG block store (``settings.DAG_DIR``).

DESIGN section 3: RocksDB lets one process open a database read-write, so

* the **store worker** (Celery queue ``store``, one process, threads pool) holds
  the primary instance, through :func:`dag_writer`, from the moment it is ready
  until it shuts down, and is the only writer;
* **web processes** read through a *secondary* instance, :func:`dag_reader`,
  which never takes the lock, and catches up with the primary when a read misses
  (the block store does that itself for ``get`` and ``has``);
* the ``dag`` **command** opens its own short-lived instances
  (:func:`try_open_primary`, :func:`open_secondary`) and, when another process
  holds the lock, sends writes to the store worker.

Who holds the primary is read from RocksDB's own ``LOCK``: opening a primary
that another process holds fails with a lock error, which becomes
:class:`DagStoreLocked`. Nothing else is trusted for that (a heartbeat row can
be stale; a PID file can outlive its process); the lock is released by the
kernel when its holder dies, however it dies.

Secondary instances each need a private directory. They live under
``DATA_DIR/secondary/<host>-<pid>/`` (the host name keeps containers that share
the data volume, and may share PIDs, apart), are removed when the handle
closes, and a process that opens its first one removes the directories left by
dead processes of the same host.

Handles open lazily (never in ``AppConfig.ready()``: the autoreloader runs it
twice), are shared by the threads of a process (the block store is
thread-safe), are dropped unclosed in a forked child (the parent still owns
them), and are closed at process exit and at Celery worker shutdown.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from django.conf import settings

from chain.core.blockstore import BlockStore, StoreError

logger = logging.getLogger(__name__)


class DagStoreLocked(StoreError):
    """Another process (normally the store worker) holds the primary instance."""


class DagStoreUnavailable(StoreError):
    """There is no DAG store at the path yet (the store worker creates it when it starts)."""


def dag_path() -> Path:
    return Path(settings.DAG_DIR)


# -- opening single instances -------------------------------------------------------------
def _is_lock_error(exc: StoreError) -> bool:
    # RocksDB: "IO error: While lock file: …/LOCK: Resource temporarily unavailable"
    # (another process) or "IO error: lock hold by current process, …" (another
    # handle here). Anything else (corruption, permissions) is a real failure.
    text = str(exc)
    return "While lock file" in text or "lock hold by" in text


def open_primary(path: str | Path | None = None) -> BlockStore:
    """A new read-write instance; :class:`DagStoreLocked` if anyone else holds it.

    Only the store worker and a ``dag`` command that found the store free may
    call this: a web process never does.
    """
    path = Path(path or dag_path())
    path.mkdir(parents=True, exist_ok=True)
    try:
        return BlockStore(path)
    except StoreError as exc:
        if _is_lock_error(exc):
            raise DagStoreLocked(f"the DAG store {path} is held by another process") from None
        raise


def try_open_primary(path: str | Path | None = None) -> BlockStore | None:
    """The primary if the lock is free, else None (the store worker has it).

    Probing and taking are one step, so no other process can slip in between.
    """
    try:
        return open_primary(path)
    except DagStoreLocked:
        return None


def primary_held_elsewhere(path: str | Path | None = None) -> bool:
    """Whether another process (or another handle in this one) holds the primary.

    Probes by opening the primary and closing it again, so it creates an empty
    store when there is none. Not for web processes, which must never open the
    primary; they can read the store worker's heartbeat instead.
    """
    path = Path(path or dag_path())
    with _lock:
        if _writer is not None and _writer.path == str(path) and _owner_pid == os.getpid():
            return False
    store = try_open_primary(path)
    if store is None:
        return True
    store.close()
    return False


class _Secondary(BlockStore):
    """A secondary instance that removes its private directory when it closes."""

    def __init__(self, path: Path, private_dir: str) -> None:
        super().__init__(path, readonly_secondary=True, secondary_path=private_dir)
        self.private_dir = private_dir

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.private_dir, ignore_errors=True)
        _remove_process_dir_if_empty(Path(self.private_dir).parent)


def open_secondary(path: str | Path | None = None) -> BlockStore:
    """A new read-only secondary instance (close it when done).

    :class:`DagStoreUnavailable` when no store exists yet: opening a secondary
    on a missing database would create an empty directory in its place.
    """
    path = Path(path or dag_path())
    if not (path / "CURRENT").exists():
        raise DagStoreUnavailable(f"no DAG store at {path} yet (the store worker creates it when it starts)")
    private_dir = tempfile.mkdtemp(prefix="dag-", dir=_process_dir())
    try:
        return _Secondary(path, private_dir)
    except StoreError as exc:
        shutil.rmtree(private_dir, ignore_errors=True)
        if "Column family not found" in str(exc):
            # CURRENT is written before the store worker's first open has added
            # the blocks column family: the store is still being created.
            raise DagStoreUnavailable(f"the DAG store at {path} is still being created") from None
        raise
    except BaseException:
        shutil.rmtree(private_dir, ignore_errors=True)
        raise


# -- secondary directories --------------------------------------------------------------------
_SWEPT = False


def _secondary_root() -> Path:
    return Path(settings.DATA_DIR) / "secondary"


def _process_dir() -> Path:
    global _SWEPT
    host = socket.gethostname()
    root = _secondary_root()
    if not _SWEPT:
        _SWEPT = True
        _sweep_dead(root, host)
    mine = root / f"{host}-{os.getpid()}"
    mine.mkdir(parents=True, exist_ok=True)
    return mine


def _sweep_dead(root: Path, host: str) -> None:
    """Remove the secondary directories of this host's processes that no longer run."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        name, _, pid_text = entry.name.rpartition("-")
        if name != host or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_process_dir_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another handle of this process) or already gone
        directory.rmdir()


# -- process-level handles -----------------------------------------------------------------------
_lock = threading.RLock()
_writer: BlockStore | None = None
_reader: BlockStore | None = None
_owner_pid = os.getpid()
_inherited: list[BlockStore] = []  # a parent's handles, kept referenced and never closed here


def _forget_if_forked() -> None:
    """After a fork the child must not use, close or clean up the parent's handles."""
    global _writer, _reader, _owner_pid, _SWEPT
    if _owner_pid == os.getpid():
        return
    _inherited.extend(h for h in (_writer, _reader) if h is not None)
    _writer = _reader = None
    _owner_pid = os.getpid()
    _SWEPT = False


def dag_writer() -> BlockStore:
    """This process's primary instance, opened on first use.

    Only for the store worker (and ``CELERY_TASK_ALWAYS_EAGER`` runs). Raises
    :class:`DagStoreLocked` while another process holds the store.
    """
    global _writer
    with _lock:
        _forget_if_forked()
        path = dag_path()
        if _writer is None or _writer.path != str(path):
            if _writer is not None:
                _writer.close()
                _writer = None
            _writer = open_primary(path)
            logger.info("opened the DAG store %s as primary", path)
        return _writer


def dag_reader() -> BlockStore:
    """A handle for reading: this process's primary if it holds one, else a secondary.

    Never opens the primary. Raises :class:`DagStoreUnavailable` before the
    store exists.
    """
    global _reader
    with _lock:
        _forget_if_forked()
        path = str(dag_path())
        if _writer is not None and _writer.path == path:
            return _writer
        if _reader is None or _reader.path != path:
            if _reader is not None:
                _reader.close()
                _reader = None
            _reader = open_secondary(path)
        return _reader


def holds_dag_writer() -> bool:
    """Whether this process holds the primary (it is the store worker)."""
    with _lock:
        _forget_if_forked()
        return _writer is not None and _writer.path == str(dag_path())


def close_dag_stores() -> None:
    """Close this process's handles (worker shutdown, process exit, tests)."""
    global _writer, _reader
    with _lock:
        _forget_if_forked()
        for handle in (_reader, _writer):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # closing at exit must not mask the real error
                    logger.exception("closing the DAG store %s failed", handle.path)
        _writer = _reader = None


def dag_health() -> dict:
    """What /healthz says about the DAG store, read without ever opening the primary."""
    path = dag_path()
    try:
        store = dag_reader()
        store.catch_up()
        pins = len(store.pins())
    except Exception as exc:  # a health report must describe a failure, never raise one
        return {"ok": False, "path": str(path), "error": str(exc)}
    return {"ok": True, "path": str(path), "mode": "secondary" if store.readonly else "primary", "pins": pins}


atexit.register(close_dag_stores)
