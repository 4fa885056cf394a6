"""A large upload is added to the DAG while it arrives; the file it becomes takes that pin, and only that one.

The store worker's early add (``storage.upload_ingest_early``) runs here on a
thread while the test plays the web process's upload handler, as the two
processes would. What must hold whatever the order: the file is stored once
with exactly one pin, an upload that stops leaves nothing, an early add that
nobody claims is let go, and ``file_ingest`` never adds what the early add
is still adding.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from chain.core.cid import CID
from chain.stores import dag_writer
from records.clinical import storage, uploads
from records.clinical.reading import SequentialReader
from records.clinical.services import record_attach_file
from records.keys import unwrap_file_key
from records.models import EarlyIngest, RecordFile
from records.policy import record_get_for_user
from tests.records.conftest import pdf_bytes

KIB = 1 << 10
THRESHOLD = 256 * KIB

pytestmark = pytest.mark.django_db(transaction=True)  # the early add's thread has a connection of its own


class StoreWorker:
    """Plays the store worker: each early add the upload asks for runs on a thread of its own.

    Asking returns once the early add holds the growing file (or has ended without it), as a
    running worker takes the message while the upload goes on. Otherwise, on a busy machine, the
    thread could start after the upload's end and find it over: the case of a late message,
    which has a test of its own.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.threads: list[threading.Thread] = []
        self.outcomes: list[str] = []
        self._holding: dict[threading.Thread, threading.Event] = {}

    def ask(self, stream_id) -> bool:
        self.asked.append(str(stream_id))
        thread = threading.Thread(target=self._run, args=(str(stream_id),))
        self._holding[thread] = threading.Event()
        self.threads.append(thread)
        thread.start()
        assert self._holding[thread].wait(30), "the early add did not start"
        return True

    def lock_spool(self, real, fd: int, *, wait: float) -> bool:
        taken = real(fd, wait=wait)
        holding = self._holding.get(threading.current_thread())
        if holding is not None:
            holding.set()
        return taken

    def _run(self, stream_id: str) -> None:
        try:
            self.outcomes.append(storage.upload_ingest_early(stream_id))
        finally:
            self._holding[threading.current_thread()].set()
            connection.close()

    def wait_started(self) -> None:
        """Until the early add holds the growing file (its own link to it): a busy machine starts threads late."""
        deadline = time.monotonic() + 30
        while not any(name.endswith(".early") for name in spool_files()):
            assert time.monotonic() < deadline, "the early add did not start"
            time.sleep(0.01)

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(timeout=60)
        return self.outcomes


@pytest.fixture
def worker(monkeypatch, node, settings):
    settings.DAG_CHUNK_SIZE = 64 * KIB
    monkeypatch.setattr(uploads, "EARLY_INGEST_BYTES", THRESHOLD)
    store_worker = StoreWorker()
    monkeypatch.setattr(uploads, "_ask_early_ingest", store_worker.ask)
    monkeypatch.setattr(storage, "lock_spool", functools.partial(store_worker.lock_spool, storage.lock_spool))
    return store_worker


def upload(
    data: bytes, *, complete: bool = True
) -> tuple[uploads.EncryptingUploadHandler, uploads.SpooledUpload | None]:
    """Feed ``data`` through the upload handler in 64 KiB pieces, as a request body would arrive."""
    handler = uploads.EncryptingUploadHandler(max_bytes=64 << 20)
    handler.new_file("file", "scan.pdf", "application/pdf", len(data))
    for start in range(0, len(data), 64 * KIB):
        handler.receive_data_chunk(data[start : start + 64 * KIB], start)
    return handler, handler.file_complete(len(data)) if complete else None


def attach(draft, spooled) -> RecordFile:
    access = record_get_for_user(draft.author, draft.public_id, action="upload")
    return record_attach_file(access=access, upload=spooled)


def plaintext(record_file: RecordFile, draft) -> bytes:
    from chain.core import stream

    record_file.refresh_from_db()
    access = record_get_for_user(draft.author, draft.public_id)
    reader = SequentialReader(CID.decode(record_file.root_cid))
    reader.store = dag_writer()
    pieces = stream.decrypt_range(
        unwrap_file_key(access.dek, record_file),
        reader,
        associated_data=record_file.stream_associated_data(),
        ciphertext_total=record_file.ciphertext_size,
    )
    return b"".join(pieces)


def spool_files() -> list[str]:
    spool = Path(settings.SPOOL_DIR)
    return sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


def spool_fsyncs(monkeypatch) -> list[str]:
    """The names of the spool files fsynced from now on (the upload's own ``os.fsync``)."""
    synced: list[str] = []
    real = os.fsync

    def recorded(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.startswith(str(settings.SPOOL_DIR)):
            synced.append(os.path.basename(name))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    return synced


def count_adds(monkeypatch) -> list[int]:
    adds: list[int] = []
    real = storage.add_file

    def counted(*args, **kwargs):
        adds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "add_file", counted)
    return adds


def test_a_large_upload_is_added_while_it_arrives_and_its_file_takes_that_pin(worker, draft, monkeypatch):
    adds = count_adds(monkeypatch)
    synced = spool_fsyncs(monkeypatch)
    data = pdf_bytes() + os.urandom(3 << 20)
    _handler, spooled = upload(data)
    assert worker.asked == [str(spooled.stream_id)]  # once, by the stream's id only
    # The upload answered once the early add had stored it durably: its spool file never went to the disk.
    assert EarlyIngest.objects.filter(stream_id=spooled.stream_id).exists()
    assert synced == []
    assert worker.join() == ["held"]  # done before any record file existed
    early = EarlyIngest.objects.get()
    assert early.ciphertext_size == spooled.ciphertext_size

    record_file = attach(draft, spooled)
    assert storage.file_ingest(record_file.pk) == "stored"
    assert len(adds) == 1  # the early add's, not a second one
    record_file.refresh_from_db()
    assert record_file.status == "stored" and record_file.root_cid == early.root_cid
    assert dag_writer().pin_count(CID.decode(record_file.root_cid)) == 1
    assert not EarlyIngest.objects.exists()
    assert spool_files() == []
    assert plaintext(record_file, draft) == data


def test_an_early_add_that_ends_after_the_file_exists_stores_the_file_itself(worker, draft, monkeypatch):
    proceed = threading.Event()
    real = storage._early_added

    def held_back(*args):
        assert proceed.wait(30)
        return real(*args)

    monkeypatch.setattr(storage, "_early_added", held_back)
    monkeypatch.setattr(uploads, "EARLY_ADD_WAIT", 0.2)
    synced = spool_fsyncs(monkeypatch)
    data = pdf_bytes() + os.urandom(2 << 20)
    _handler, spooled = upload(data)
    # The early add did not end within the wait: the upload made its spool file durable itself.
    assert synced == [f"{spooled.stream_id}.enc.part"]
    record_file = attach(draft, spooled)
    # file_ingest runs meanwhile: the early add holds the file, so it waits rather than adding it again.
    monkeypatch.setattr(storage, "EARLY_INGEST_WAIT", 0.2)
    assert storage.file_ingest(record_file.pk) == "waiting"
    proceed.set()
    assert worker.join() == ["stored"]
    record_file.refresh_from_db()
    assert record_file.status == "stored"
    assert dag_writer().pin_count(CID.decode(record_file.root_cid)) == 1
    assert storage.file_ingest(record_file.pk) == "stored"  # the re-drive's late ask: nothing more
    assert dag_writer().pin_count(CID.decode(record_file.root_cid)) == 1
    assert not EarlyIngest.objects.exists()
    assert spool_files() == []
    assert plaintext(record_file, draft) == data


def test_an_upload_refused_midway_stops_its_early_add_and_leaves_nothing(worker):
    handler, _ = upload(pdf_bytes() + os.urandom(1 << 20), complete=False)
    assert worker.asked
    worker.wait_started()
    handler.upload_interrupted()  # the client went away, or the size limit was passed
    assert worker.join() == ["refused"]
    assert not EarlyIngest.objects.exists()
    assert list(dag_writer().pins()) == []
    assert spool_files() == []


def test_an_early_add_asked_too_late_leaves_the_file_to_file_ingest(monkeypatch, node, settings, draft):
    settings.DAG_CHUNK_SIZE = 64 * KIB
    monkeypatch.setattr(uploads, "EARLY_INGEST_BYTES", THRESHOLD)
    asked = []
    monkeypatch.setattr(uploads, "_ask_early_ingest", lambda stream_id: asked.append(str(stream_id)) or True)
    synced = spool_fsyncs(monkeypatch)
    data = pdf_bytes() + os.urandom(1 << 20)
    _handler, spooled = upload(data)  # the worker was busy: the message waits
    assert synced == [f"{spooled.stream_id}.enc.part"]  # no early add holds it: the upload made it durable
    record_file = attach(draft, spooled)
    assert storage.upload_ingest_early(asked[0]) == "late"
    assert storage.file_ingest(record_file.pk) == "stored"
    assert dag_writer().pin_count(CID.decode(RecordFile.objects.get().root_cid)) == 1
    assert spool_files() == []  # the upload's end marker went with the file
    assert plaintext(record_file, draft) == data


def test_a_file_ingest_holding_the_file_turns_a_late_early_add_away(worker, draft, monkeypatch):
    monkeypatch.setattr(uploads, "EARLY_ADD_WAIT", 0.2)  # the upload's end waits for the lock held here
    data = pdf_bytes() + os.urandom(1 << 20)
    handler = uploads.EncryptingUploadHandler(max_bytes=64 << 20)
    handler.new_file("file", "scan.pdf", "application/pdf", len(data))
    part = Path(handler._part)
    with part.open("rb") as held:  # as file_ingest holds a spool file while it adds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        for start in range(0, len(data), 64 * KIB):
            handler.receive_data_chunk(data[start : start + 64 * KIB], start)
        spooled = handler.file_complete(len(data))
        assert worker.join() == ["late"]
    record_file = attach(draft, spooled)
    assert storage.file_ingest(record_file.pk) == "stored"
    assert dag_writer().pin_count(CID.decode(RecordFile.objects.get().root_cid)) == 1
    assert not EarlyIngest.objects.exists()


def test_an_early_add_no_file_claims_is_let_go_by_the_redrive(worker):
    from records.tasks import redrive

    handler, spooled = upload(pdf_bytes() + os.urandom(1 << 20))
    assert worker.join() == ["held"]
    handler.discard_unclaimed()  # the form was refused after the file arrived: no record file
    spooled.discard()
    root = CID.decode(EarlyIngest.objects.get().root_cid)
    assert dag_writer().pin_count(root) == 1
    redrive()  # within the hour: kept, its file may still come
    assert EarlyIngest.objects.exists()
    EarlyIngest.objects.update(created_at=timezone.now() - timedelta(hours=2))
    assert redrive()["early_adds_dropped"] == 1
    from records.clinical.tasks import drop_early_ingest

    drop_early_ingest(EarlyIngest.objects.get().pk)  # what the message it queued runs on the store worker
    assert dag_writer().pin_count(root) == 0
    assert not EarlyIngest.objects.exists()
    drop_early_ingest(12345)  # a duplicate message: nothing to do


def test_small_uploads_and_inline_tasks_ask_for_no_early_add(monkeypatch, node):
    from records.clinical.tasks import ingest_upload

    sent = []
    monkeypatch.setattr(uploads, "EARLY_INGEST_BYTES", THRESHOLD)
    monkeypatch.setattr(ingest_upload, "apply_async", lambda args: sent.append(args))
    monkeypatch.setitem(ingest_upload.app.conf, "task_always_eager", False)
    upload(pdf_bytes() + os.urandom(THRESHOLD // 2))
    assert sent == []
    _handler, spooled = upload(pdf_bytes() + os.urandom(2 * THRESHOLD))
    assert sent == [[str(spooled.stream_id)]]  # once, with the stream's id and nothing else
    monkeypatch.setitem(ingest_upload.app.conf, "task_always_eager", True)
    upload(pdf_bytes() + os.urandom(2 * THRESHOLD))
    assert len(sent) == 1


def test_one_early_add_at_a_time_the_next_upload_is_added_after_it_arrives(worker, draft):
    # An early add lasts as long as its upload and holds a store worker thread: one at a time.
    with storage._EARLY_ADDS:
        data = pdf_bytes() + os.urandom(1 << 20)
        _handler, spooled = upload(data)
        assert worker.join() == ["busy"]
    record_file = attach(draft, spooled)
    assert storage.file_ingest(record_file.pk) == "stored"
    assert dag_writer().pin_count(CID.decode(RecordFile.objects.get().root_cid)) == 1
    assert not EarlyIngest.objects.exists()
    assert spool_files() == []
    assert plaintext(record_file, draft) == data
