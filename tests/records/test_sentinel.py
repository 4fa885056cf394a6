"""A sentinel in record content and files never reaches anything stored or sent.

One full cycle — a doctor writes a prescription and an imaging study with
files, edits, uploads, finalises, amends; the patient uploads a document; the
store worker ingests, stores and anchors; the chain seals; both read and
download — with the sentinel in titles, notes, medication names, file names,
DICOM tags and file bytes. Then the raw bytes of everything the node keeps or
emits are searched for it in every encoding a careless path could produce:

* every row of every table (plus SQLite's raw pages, free pages included, and
  the decoded sessions);
* every file under ``DAG_DIR``, ``CHAIN_DIR`` and ``SPOOL_DIR`` (RocksDB SSTs,
  WAL, SST files, manifests, LOG files; the spool while it still holds
  uploads), both while the stores are open and after they are closed, plus
  every key and value read back through RocksDB itself (compression cannot
  hide a leak there) and everything under ``DATA_DIR`` (caches, broker,
  secondary instances);
* every log record of every logger at DEBUG, SQL statements included, and
  whatever reached the process's stdout/stderr;
* every Celery message the cycle would publish, serialised as kombu would.

The test also proves it is not vacuous: the sentinel comes back out of the
portal's pages and downloads once decrypted for an allowed reader.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse

from chain.ledger_services import chain_seal
from records.models import MedicalRecord, RecordFile, RecordVersion
from tests.accounts.test_keys import database_dump
from tests.records.conftest import SENTINEL, dicom_bytes, login, pdf_bytes, png_bytes, upload_file

pytestmark = pytest.mark.django_db

# Unique per run, so files left in the shared EMR_DATA_DIR by other tests
# cannot be mistaken for a leak of this run (SENTINEL is a prefix of TOKEN).
TOKEN = f"{SENTINEL}-{secrets.token_hex(4)}"
TOKEN_ZH = f"哨兵病历{secrets.token_hex(4)}机密"


# -- what a leak looks like ----------------------------------------------------------------


def _base64_forms(raw: bytes) -> list[bytes]:
    """The part of ``raw``'s base64 that does not depend on its neighbours, at each alignment."""
    forms = []
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(bytes(shift) + raw)
            forms.append(encoded[4 if shift else 0 : -4])
    return forms


def needles(text: str) -> dict[str, bytes]:
    raw = text.encode()
    forms = {
        "utf-8": raw,
        "utf-16-le": text.encode("utf-16-le"),
        "utf-16-be": text.encode("utf-16-be"),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "json \\u-escaped": json.dumps(text).strip('"').encode(),
        "python repr": ascii(text).strip("'").encode(),
        "bytes repr": repr(raw)[2:-1].encode(),
    }
    for index, form in enumerate(_base64_forms(raw)):
        forms[f"base64 #{index}"] = form
    return forms


NEEDLES = {f"{name} of {text[:12]}…": form for text in (TOKEN, TOKEN_ZH) for name, form in needles(text).items()}


def find_leaks(where: str, blob: bytes) -> list[str]:
    return [f"{where}: {name}" for name, form in NEEDLES.items() if form in blob]


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        root = Path(root)
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (path for path in sorted(root.rglob("*")) if path.is_file())


def scan_files(*roots: Path) -> tuple[list[str], int]:
    leaks, count = [], 0
    for path in files_under(*roots):
        try:
            data = path.read_bytes()
        except (FileNotFoundError, PermissionError):  # a RocksDB file rotated away meanwhile
            continue
        count += 1
        leaks += find_leaks(str(path), data)
    return leaks, count


def rocksdb_contents(path: Path, column_families: Iterable[str]) -> bytes:
    """Every key and value of a RocksDB database, read through RocksDB (decompressed)."""
    from rocksdict import AccessType, Options, Rdict

    def as_bytes(value) -> bytes:
        return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else repr(value).encode()

    chunks = []
    # The stores are opened with raw_mode=False (DESIGN section 3), so must this reader be.
    db = Rdict(
        str(path),
        options=Options(raw_mode=False),
        column_families={name: Options(raw_mode=False) for name in column_families},
        access_type=AccessType.read_only(),
    )
    try:
        for name in column_families:
            family = db.get_column_family(name)
            iterator = family.iter()
            iterator.seek_to_first()
            while iterator.valid():
                chunks += [as_bytes(iterator.key()), as_bytes(iterator.value())]
                iterator.next()
            del iterator
    finally:
        db.close()
    return b"\x00".join(chunks)


def full_database_bytes() -> bytes:
    """Rows of every table, decoded sessions and (SQLite) the raw pages, free ones included."""
    from django.contrib.sessions.models import Session

    parts = [database_dump()]
    parts += [repr(session.get_decoded()).encode() for session in Session.objects.all()]
    raw = connection.connection
    if connection.vendor == "sqlite" and hasattr(raw, "serialize"):
        parts.append(raw.serialize())
    return b"\x00".join(parts)


# -- the Celery outbox ---------------------------------------------------------------------


class CeleryOutbox:
    """Stands in for the broker: keeps each message as kombu would publish it."""

    def __init__(self) -> None:
        self.pending: list[tuple[object, tuple, dict]] = []
        self.published: list[bytes] = []
        self.names: list[str] = []

    def apply_async(self, task, args=None, kwargs=None, task_id=None, **options):
        from celery.result import AsyncResult
        from kombu.serialization import dumps as kombu_dumps
        from kombu.utils.json import dumps as json_dumps

        args, kwargs = tuple(args or ()), dict(kwargs or {})
        task_id = task_id or str(uuid.uuid4())
        message = task.app.amqp.as_task_v2(task_id, task.name, args, kwargs)
        _content_type, _encoding, body = kombu_dumps(message.body, serializer="json")
        self.published.append(body.encode() if isinstance(body, str) else body)
        self.published.append(json_dumps({"headers": message.headers, "properties": message.properties}).encode())
        self.published.append(json_dumps({"args": args, "kwargs": kwargs, "options": options}, default=repr).encode())
        self.pending.append((task, args, kwargs))
        self.names.append(task.name)
        return AsyncResult(task_id, app=task.app)

    def run_all(self) -> int:
        """Run what was queued (and what that queues) the way a worker would, in process."""
        ran = 0
        while self.pending:
            task, args, kwargs = self.pending.pop(0)
            task(*args, **kwargs)
            ran += 1
        return ran


@pytest.fixture
def celery_outbox(monkeypatch):
    outbox = CeleryOutbox()

    def apply_async(
        self, args=None, kwargs=None, task_id=None, producer=None, link=None, link_error=None, shadow=None, **options
    ):
        return outbox.apply_async(self, args, kwargs, task_id, **options)

    monkeypatch.setattr("celery.app.task.Task.apply_async", apply_async)
    return outbox


# -- logs: every logger, at DEBUG, SQL included ---------------------------------------------


@pytest.fixture
def all_logs(caplog):
    names = ["", *logging.root.manager.loggerDict]
    detached = []
    for name in names:
        logger = logging.getLogger(name)
        caplog.set_level(logging.DEBUG, logger=name or None)
        if not logger.propagate and caplog.handler not in logger.handlers:
            logger.addHandler(caplog.handler)
            detached.append(logger)
    forced = connection.force_debug_cursor
    connection.force_debug_cursor = True  # SQL and its parameters go to django.db.backends
    yield caplog
    connection.force_debug_cursor = forced
    for logger in detached:
        logger.removeHandler(caplog.handler)


def log_bytes(caplog) -> bytes:
    parts = [caplog.text]
    for record in caplog.records:
        try:
            parts.append(record.getMessage())
        except Exception:  # a malformed record is still searched through its fields
            parts.append(repr(record.msg))
        parts.append(repr(record.__dict__))
    return "\n".join(parts).encode("utf-8", "backslashreplace")


# -- the cycle -----------------------------------------------------------------------------


def dicom_with_description() -> bytes:
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.StudyDescription = TOKEN
    dataset.SeriesDescription = TOKEN_ZH
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def prescription(title: str, instructions: str, medication: str, *, existing_rows: int = 0, **extra) -> dict:
    """The form as the page posts it; ``existing_rows`` as rendered for a draft or amendment."""
    return {
        "title": title,
        "instructions": instructions,
        "medications-TOTAL_FORMS": "1",
        "medications-INITIAL_FORMS": str(existing_rows),
        "medications-MIN_NUM_FORMS": "0",
        "medications-MAX_NUM_FORMS": "30",
        "medications-0-name": medication,
        "medications-0-dose": "500 mg",
        "medications-0-route": "oral",
        "medications-0-frequency": "three times daily",
        "medications-0-duration": "7 days",
        **extra,
    }


@contextmanager
def committing(django_capture_on_commit_callbacks):
    """Run the request's on-commit hooks (the enqueues) as a real commit would."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        yield callbacks


def test_a_sentinel_never_leaves_the_encrypted_envelope(
    client, carol, alice, visit, node, all_logs, celery_outbox, capfd, django_capture_on_commit_callbacks
):
    def on_commit():
        return committing(django_capture_on_commit_callbacks)

    spool = Path(settings.SPOOL_DIR)
    png = png_bytes(TOKEN.encode())
    # Big enough to span several DAG chunks.
    pdf = pdf_bytes(f"{TOKEN} {TOKEN_ZH}") + secrets.token_bytes(300_000) + f"{TOKEN}\n%%EOF\n".encode()
    dicom = dicom_with_description()
    doc_pdf = pdf_bytes(f"patient copy {TOKEN}")

    # The doctor writes a prescription, edits the draft and an imaging study with files.
    login(client, carol)
    with on_commit():
        response = client.post(
            reverse("clinic_record_new", args=[visit.public_id, "prescription"]),
            prescription(f"Rx {TOKEN}", f"Take with food. {TOKEN_ZH}", f"Amoxicillin-{TOKEN}"),
        )
    assert response.status_code == 302, response.content
    rx = MedicalRecord.objects.get(kind="prescription")
    with on_commit():
        response = client.post(
            reverse("record_edit", args=[rx.public_id]),
            prescription(
                f"Rx {TOKEN}", f"Take with food, twice. {TOKEN_ZH} {TOKEN}", f"Amoxicillin-{TOKEN}", existing_rows=1
            ),
        )
    assert response.status_code == 302, response.content
    with on_commit():
        response = client.post(
            reverse("clinic_record_new", args=[visit.public_id, "imaging"]),
            {"title": f"MRI {TOKEN}", "modality": "MR", "body_site": TOKEN_ZH, "findings": f"Lesion {TOKEN}"},
        )
    assert response.status_code == 302, response.content
    imaging = MedicalRecord.objects.get(kind="imaging")
    with on_commit():
        response = client.post(
            reverse("record_file_upload", args=[imaging.public_id]),
            {
                "file": [
                    upload_file(f"{TOKEN}.png", png, "image/png"),
                    upload_file(f"{TOKEN_ZH}.pdf", pdf, "application/pdf"),
                    upload_file(f"{TOKEN}.dcm", dicom, "application/dicom"),
                ]
            },
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 200, response.content
    assert "store.records_ingest_file" in celery_outbox.names

    # The spool holds the uploads, as ciphertext only, until the store worker ingests them.
    spooled = list(files_under(spool))
    assert len(spooled) == 3 and all(path.suffix == ".enc" and path.stat().st_size for path in spooled)
    spool_leaks, _count = scan_files(spool)
    assert celery_outbox.run_all() == 3
    assert list(files_under(spool)) == [], "the spool must be empty after ingest"
    assert RecordFile.objects.filter(status="stored").count() == 3

    # Sign and finalise both; the store worker stores and anchors; the chain seals.
    for record in (rx, imaging):
        with on_commit():
            response = client.post(reverse("record_finalize", args=[record.public_id]))
        assert response.status_code == 302
    assert celery_outbox.run_all() == 2
    assert chain_seal() is not None
    # An amendment: a new version, the reason in its encrypted content, a supersession on chain.
    with on_commit():
        response = client.post(
            reverse("record_amend", args=[rx.public_id]),
            prescription(
                f"Rx {TOKEN}",
                f"Corrected. {TOKEN_ZH}",
                f"Amoxicillin-{TOKEN}",
                existing_rows=1,
                amendment_reason=f"typo {TOKEN}",
            ),
        )
    assert response.status_code == 302, response.content
    assert celery_outbox.run_all() == 1
    chain_seal()

    # The patient uploads her own document.
    client.logout()
    login(client, alice)
    with on_commit():
        response = client.post(
            reverse("patient_upload"),
            {"title": f"Scan {TOKEN}", "description": TOKEN_ZH, "file": upload_file(f"{TOKEN}.pdf", doc_pdf)},
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 200, response.content
    spool_leaks += scan_files(spool)[0]
    celery_outbox.run_all()
    chain_seal()
    assert list(files_under(spool)) == [], "the spool must be empty after ingest"
    assert not RecordVersion.objects.exclude(storage="stored").exists()
    assert RecordVersion.objects.exclude(anchor_tx="").count() == 4

    # Not vacuous: the allowed readers get the sentinel back, decrypted.
    seen = b""
    seen += client.get(reverse("patient_home")).content
    document = MedicalRecord.objects.get(kind="document")
    for record in (rx, imaging, document):
        page = client.get(reverse("record_detail", args=[record.public_id]))
        assert page.status_code == 200
        seen += page.content
        for record_file in record.current_version.files.all():
            response = client.get(
                reverse("record_file", args=[record.public_id, record_file.public_id]) + "?download=1"
            )
            assert response.status_code == 200
            seen += b"".join(response.streaming_content) + response["Content-Disposition"].encode()
    client.logout()
    login(client, carol)
    seen += client.get(reverse("record_detail", args=[imaging.public_id])).content
    seen += client.get(reverse("record_detail", args=[rx.public_id]) + "?version=1").content
    for form in (png, pdf, dicom, doc_pdf):
        assert form in seen
    assert TOKEN.encode() in seen and TOKEN_ZH.encode() in seen
    assert f"typo {TOKEN}".encode() in seen

    # Now search everything the node keeps or emits.
    leaks = list(spool_leaks)
    leaks += find_leaks("database", full_database_bytes())
    store_leaks, open_count = scan_files(settings.DAG_DIR, settings.CHAIN_DIR, spool)
    leaks += store_leaks
    leaks += find_leaks("celery messages", b"\n".join(celery_outbox.published))
    assert {"store.records_ingest_file", "store.records_store_version"} <= set(celery_outbox.names)

    from chain import chainstore, stores
    from chain.core.blockstore import BLOCKS_CF

    stores.close_dag_stores()
    chainstore.close_all()  # flushes memtables into SST files
    closed_leaks, closed_count = scan_files(settings.DAG_DIR, settings.CHAIN_DIR, spool)
    leaks += closed_leaks
    dag_contents = rocksdb_contents(Path(settings.DAG_DIR), ["default", BLOCKS_CF])
    chain_contents = rocksdb_contents(Path(settings.CHAIN_DIR), ["default"])
    assert len(dag_contents) > len(pdf) and chain_contents
    leaks += find_leaks("DAG store (read back)", dag_contents)
    leaks += find_leaks("chain store (read back)", chain_contents)
    leaks += scan_files(settings.DATA_DIR)[0]
    assert any(p.suffix == ".sst" or p.name.endswith(".log") for p in files_under(settings.DAG_DIR)), (
        "no store files searched"
    )
    assert open_count and closed_count

    logs = log_bytes(all_logs)
    assert any(r.name == "django.db.backends" for r in all_logs.records), "SQL logging was not captured"
    leaks += find_leaks("logs", logs)
    captured = capfd.readouterr()
    leaks += find_leaks("stdout/stderr", (captured.out + captured.err).encode("utf-8", "backslashreplace"))

    assert leaks == [], "plaintext found:\n" + "\n".join(leaks)


@pytest.mark.parametrize("text", [TOKEN, TOKEN_ZH], ids=["latin", "chinese"])
def test_the_search_recognises_each_encoding(text):
    """The scanner itself: every form is found when embedded in unrelated bytes."""
    raw = text.encode()
    samples = [
        raw,
        text.encode("utf-16"),
        raw.hex().encode(),
        json.dumps({"t": text}).encode(),
        repr({"t": text}).encode(),
        repr(raw).encode(),
    ]
    samples += [base64.b64encode(bytes(pad) + raw + b"tail") for pad in range(3)]
    samples += [base64.urlsafe_b64encode(b"xy" + raw) for _ in range(1)]
    for sample in samples:
        assert find_leaks("sample", b"<<" + sample + b">>"), sample
    assert find_leaks("noise", secrets.token_bytes(1 << 16)) == []
