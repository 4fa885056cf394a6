"""Uploads: size limit, types judged by content, file names, interruptions, big files.

What must hold whatever goes wrong: nothing half-stored (no record, no file
row, no DAG pin) and nothing left in the spool — not even ciphertext.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from records.clinical import storage
from records.clinical.reading import content_of
from records.clinical.uploads import sanitize_filename
from records.models import MedicalRecord, RecordFile
from records.policy import record_get_for_user
from tests.records.conftest import login, pdf_bytes, png_bytes
from tests.records.test_sentinel import CeleryOutbox

KIB, MIB = 1 << 10, 1 << 20
LIMIT = 64 * KIB
BOUNDARY = "yilian-" + secrets.token_hex(16)


# -- helpers -------------------------------------------------------------------------------


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body framed by hand, so file names reach the server exactly as given."""
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        )
    for filename, content_type, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def multipart_head_tail(fields: dict[str, str], filename: str, content_type: str, boundary: str = BOUNDARY):
    """The bytes before and after one file's content (for streaming the content in between)."""
    body = multipart(fields, [(filename, content_type, b"\x00SPLIT\x00")], boundary)
    head, tail = body.split(b"\x00SPLIT\x00")
    return head, tail


def post_multipart(client: Client, url: str, body: bytes, **extra):
    return client.generic(
        "POST",
        url,
        body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_ACCEPT="application/json",
        HTTP_ACCEPT_LANGUAGE="en",
        **extra,
    )


def spool_files() -> list[str]:
    spool = Path(settings.SPOOL_DIR)
    return sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


def dag_pins() -> dict:
    if not (Path(settings.DAG_DIR) / "CURRENT").exists():
        return {}
    from chain.stores import dag_writer

    return dag_writer().pins()


def assert_nothing_stored(record=None) -> None:
    if record is None:
        assert not MedicalRecord.objects.exists()
    else:
        assert not record.current_version.files.exists()
        access = record_get_for_user(record.author, record.public_id)
        assert content_of(access).get("files", []) == []
    assert not RecordFile.objects.exists()
    assert spool_files() == [], "the spool must be empty"
    assert dag_pins() == {}


@pytest.fixture(params=["patient document", "doctor attachment"])
def target(request, client, alice, node):
    """(client signed in, upload URL, extra form fields, the draft or None) for each upload view."""
    if request.param == "patient document":
        login(client, alice)
        return client, reverse("patient_upload"), {"title": "Scan"}, None
    record = request.getfixturevalue("draft")
    login(client, record.author)
    return client, reverse("record_file_upload", args=[record.public_id]), {}, record


@pytest.fixture
def celery_outbox(monkeypatch):
    """Capture what would be published; a live server commits for real."""
    outbox = CeleryOutbox()

    def apply_async(
        self, args=None, kwargs=None, task_id=None, producer=None, link=None, link_error=None, shadow=None, **options
    ):
        return outbox.apply_async(self, args, kwargs, task_id, **options)

    monkeypatch.setattr("celery.app.task.Task.apply_async", apply_async)
    return outbox


# -- size ----------------------------------------------------------------------------------


class CountingInput:
    """A wsgi.input that counts what the server read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read_bytes = data, 0

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) - self.read_bytes if size is None or size < 0 else size
        chunk = self.data[self.read_bytes : self.read_bytes + size]
        self.read_bytes += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.mark.django_db
def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(target, settings):
    client, url, fields, record = target
    settings.UPLOAD_MAX_BYTES = LIMIT
    body = multipart(fields, [("big.pdf", "application/pdf", pdf_bytes() + bytes(4 * LIMIT))])
    stream = CountingInput(body)
    response = post_multipart(client, url, body, **{"wsgi.input": stream})
    assert response.status_code == 413
    assert "larger than the limit of 64 KiB" in response.json()["message"]
    assert stream.read_bytes == 0, "the body should not be consumed when the declared length is over the limit"
    assert_nothing_stored(record)


@pytest.mark.django_db
def test_a_body_that_grows_over_the_limit_is_stopped_and_removed(target, settings):
    client, url, fields, record = target
    settings.UPLOAD_MAX_BYTES = LIMIT
    # Under the declared-length slack, so only counting the bytes as they come can catch it.
    body = multipart(fields, [("big.pdf", "application/pdf", pdf_bytes() + bytes(LIMIT))])
    assert LIMIT < len(body) < LIMIT + 64 * KIB
    response = post_multipart(client, url, body)
    assert response.status_code == 413
    assert "larger than the limit of 64 KiB" in response.json()["message"]
    assert_nothing_stored(record)


@pytest.mark.django_db
def test_a_file_of_exactly_the_limit_is_accepted(target, settings):
    client, url, fields, _record = target
    settings.UPLOAD_MAX_BYTES = LIMIT
    data = pdf_bytes() + bytes(LIMIT - len(pdf_bytes()))
    response = post_multipart(client, url, multipart(fields, [("ok.pdf", "application/pdf", data)]))
    assert response.status_code == 200, response.content
    assert RecordFile.objects.get().size == LIMIT
    assert len(spool_files()) == 1 and spool_files()[0].endswith(".enc")


# -- types, judged by content --------------------------------------------------------------

WINDOWS_EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(48) + b"PE\x00\x00" + os.urandom(4000)
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + os.urandom(4000)
REFUSED = {
    "windows executable": WINDOWS_EXE,
    "tiny windows executable": b"MZ" + bytes(20),
    "big windows executable": WINDOWS_EXE + os.urandom(3 * MIB),
    "ELF executable": ELF,
    "HTML with a script": b"<!doctype html><script>alert(1)</script>" + bytes(200),
    "SVG": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>' + bytes(100),
    "zip": b"PK\x03\x04" + os.urandom(500),
}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_disallowed_type_renamed_to_pdf_is_refused(target, kind):
    client, url, fields, record = target
    body = multipart(fields, [("report.pdf", "application/pdf", REFUSED[kind])])
    response = post_multipart(client, url, body)
    assert response.status_code == 415, response.content
    message = response.json()["message"]
    for accepted in ("PDF", "PNG", "JPEG", "DICOM"):
        assert accepted in message
    assert_nothing_stored(record)


@pytest.mark.django_db
def test_an_empty_file_is_refused_as_empty(target):
    client, url, fields, record = target
    response = post_multipart(client, url, multipart(fields, [("report.pdf", "application/pdf", b"")]))
    assert response.status_code == 400, response.content
    assert "empty" in response.json()["message"]
    assert_nothing_stored(record)


@pytest.mark.django_db
def test_one_refused_file_removes_the_accepted_ones_of_the_same_request(client, draft):
    login(client, draft.author)
    body = multipart({}, [("a.png", "image/png", png_bytes()), ("b.pdf", "application/pdf", WINDOWS_EXE)])
    response = post_multipart(client, reverse("record_file_upload", args=[draft.public_id]), body)
    assert response.status_code == 415
    assert_nothing_stored(draft)


@pytest.mark.django_db
def test_the_media_type_comes_from_the_bytes_not_the_name(client, draft):
    login(client, draft.author)
    body = multipart({}, [("scan.pdf", "application/pdf", png_bytes())])
    response = post_multipart(client, reverse("record_file_upload", args=[draft.public_id]), body)
    assert response.status_code == 200, response.content
    assert RecordFile.objects.get().media_type == "image/png"


# -- file names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("..\\..\\Windows\\system32\\boot.png", "boot.png"),
        ("C:\\fakepath\\scan.pdf", "scan.pdf"),
        ("scan\x00\x07\x1b[31m.png", "scan[31m.png"),
        ("\u202egnp.exe", "gnp.exe"),
        ("  ..hidden  report.png ", "hidden report.png"),
        ("e\u0301chographie.pdf", "échographie.pdf"),
        ("line\r\nbreak.pdf", "linebreak.pdf"),
        ("", "file"),
        ("..", "file"),
        ("/", "file"),
    ],
)
def test_sanitize_filename(raw, expected):
    assert sanitize_filename(raw) == expected


def test_sanitize_filename_bounds_the_length_and_keeps_the_extension():
    name = sanitize_filename("影像" * 200 + ".dcm")
    assert len(name) == 150 and name.endswith(".dcm")


def _is_safe(name: str) -> bool:
    return (
        name
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and not any(unicodedata.category(ch)[0] == "C" for ch in name)
    )


HOSTILE_NAMES = {
    "../../etc/passwd.png": "passwd.png",
    "..\\..\\boot.ini.png": "boot.ini.png",
    "scan\x1b[31m\x07\u202egnp.png": None,
    " .bashrc.png": None,
    "rep;ort'<b>.png": None,
}


@pytest.mark.django_db
def test_hostile_file_names_are_sanitised_in_the_record_and_the_download(client, draft):
    login(client, draft.author)
    body = multipart({}, [(name, "image/png", png_bytes()) for name in HOSTILE_NAMES])
    response = post_multipart(client, reverse("record_file_upload", args=[draft.public_id]), body)
    assert response.status_code == 200, response.content
    reported = [f["name"] for f in response.json()["files"]]
    stored = [f["name"] for f in content_of(record_get_for_user(draft.author, draft.public_id))["files"]]
    assert reported == stored and len(stored) == len(HOSTILE_NAMES)
    for name, expected in zip(stored, HOSTILE_NAMES.values(), strict=True):
        assert _is_safe(name), repr(name)
        assert ".." not in name
        if expected:
            assert name == expected
    for record_file in RecordFile.objects.all():
        storage.file_ingest(record_file.pk)
    for record_file in RecordFile.objects.all():
        response = client.get(reverse("record_file", args=[draft.public_id, record_file.public_id]) + "?download=1")
        assert response.status_code == 200
        header = response["Content-Disposition"]
        assert header.startswith('attachment; filename="')
        assert not any(ch in header for ch in "\r\n\x00\x1b\x07\u202e")
        ascii_name = header.split('filename="', 1)[1].split('"', 1)[0]
        assert all(ch.isalnum() or ch in "._-" for ch in ascii_name), header
        assert response["X-Content-Type-Options"] == "nosniff"
        b"".join(response.streaming_content)


# -- interrupted uploads -------------------------------------------------------------------


class DroppingInput:
    """A wsgi.input whose client goes away after ``after`` bytes (reset, or a silent end)."""

    def __init__(self, data: bytes, after: int, mode: str) -> None:
        self.data, self.after, self.mode, self.pos = data, after, mode, 0
        self.spool_at_drop: list[str] | None = None

    def read(self, size: int = -1) -> bytes:
        if self.pos >= self.after:
            if self.spool_at_drop is None:
                self.spool_at_drop = spool_files()
            if self.mode == "reset":
                raise OSError(104, "Connection reset by peer")
            return b""
        size = self.after - self.pos if size is None or size < 0 else min(size, self.after - self.pos)
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["reset", "eof"])
def test_an_interrupted_upload_leaves_nothing(target, mode):
    client, url, fields, record = target
    body = multipart(fields, [("scan.pdf", "application/pdf", pdf_bytes() + os.urandom(3 * MIB))])
    stream = DroppingInput(body, after=len(body) // 2 + 12345, mode=mode)
    response = post_multipart(client, url, body, **{"wsgi.input": stream})
    assert response.status_code == 400, response.content
    assert stream.spool_at_drop and stream.spool_at_drop[0].endswith(".enc.part"), (
        "the upload should have been spooling"
    )
    assert_nothing_stored(record)


# -- through a real HTTP server --------------------------------------------------------------


def session_headers(client: Client, user) -> dict[str, str]:
    """Cookies and CSRF header for a raw request as ``user``."""
    from django.middleware.csrf import _get_new_csrf_string

    client.force_login(user)
    token = _get_new_csrf_string()
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}; "
        f"{settings.CSRF_COOKIE_NAME}={token}",
        "X-CSRFToken": token,
        "Accept": "application/json",
        "Accept-Language": "en",
    }


def raw_request_head(live_server, path: str, headers: dict[str, str], content_length: int) -> bytes:
    host = urlsplit(live_server.url).netloc
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Length: {content_length}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(live_server) -> socket.socket:
    parts = urlsplit(live_server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (not waiting for the server to close: runserver
    drains an unread request body before it does)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return int(status_line.split()[1]), body


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.django_db(transaction=True)
def test_over_http_a_declared_length_over_the_limit_gets_413_without_sending_the_body(
    live_server, client, alice, node, celery_outbox
):
    headers = session_headers(client, alice)
    sock = connect(live_server)
    sock.sendall(raw_request_head(live_server, reverse("patient_upload"), headers, content_length=10 << 30))
    status, body = read_response(sock)  # nothing of the 10 GiB was sent
    sock.close()
    assert status == 413
    assert b"larger than the limit" in body
    assert_nothing_stored()
    assert celery_outbox.names == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["half-close", "reset"])
def test_over_http_a_client_that_goes_away_mid_body_leaves_nothing(
    live_server, client, alice, node, celery_outbox, how
):
    headers = session_headers(client, alice)
    body = multipart({"title": "Scan"}, [("scan.pdf", "application/pdf", pdf_bytes() + os.urandom(8 * MIB))])
    sock = connect(live_server)
    sock.sendall(raw_request_head(live_server, reverse("patient_upload"), headers, content_length=len(body)))
    sock.sendall(body[: len(body) // 2])
    assert wait_for(lambda: any(n.endswith(".part") for n in spool_files())), "the upload should be spooling"
    if how == "half-close":
        sock.shutdown(socket.SHUT_WR)  # the client stops sending but still listens
        status, _ = read_response(sock)
        assert status == 400
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.close()
    assert wait_for(lambda: spool_files() == []), f"spool not cleaned: {spool_files()}"
    assert_nothing_stored()
    assert celery_outbox.names == []


class RssSampler(threading.Thread):
    """The process's peak resident memory while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak - self.baseline


class Measured:
    """tracemalloc peak (Python heap, every thread) and RSS growth over a block."""

    def __enter__(self):
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.heap_before = tracemalloc.get_traced_memory()[0]
        self.rss = RssSampler()
        self.rss.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.rss_growth = self.rss.stop()
        self.heap_peak = tracemalloc.get_traced_memory()[1] - self.heap_before
        tracemalloc.stop()
        return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_300_mb_upload_streams_through_a_real_server_in_bounded_memory(
    live_server, client, alice, node, celery_outbox, settings
):
    settings.DAG_CHUNK_SIZE = MIB
    size = 300 * 1000 * 1000
    headers = session_headers(client, alice)
    head, tail = multipart_head_tail({"title": "Whole-body CT"}, "ct.pdf", "application/pdf")
    block = os.urandom(MIB)
    sent = hashlib.sha256()

    def content():
        position = 0
        while position < size:
            piece = block[: min(MIB, size - position)]
            if position == 0:
                piece = b"%PDF-1.7\n" + piece[9:]
            else:
                piece = position.to_bytes(8, "big") + piece[8:]
            sent.update(piece)
            position += len(piece)
            yield piece

    def body():
        yield head
        yield from content()
        yield tail

    parts = urlsplit(live_server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    with Measured() as upload:
        connection.request(
            "POST",
            reverse("patient_upload"),
            body=body(),
            headers={
                **headers,
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        response = connection.getresponse()
        payload = response.read()
    connection.close()
    assert response.status == 200, payload
    record_file = RecordFile.objects.get()
    assert record_file.size == size and record_file.status == "spooled"
    # The spool file, and the end the upload marked for the early add it asked for (not run here).
    assert spool_files() == [f"{record_file.stream_id}.enc", f"{record_file.stream_id}.enc.part.end"]
    assert celery_outbox.names[0] == "store.records_ingest_upload"
    assert (Path(settings.SPOOL_DIR) / spool_files()[0]).stat().st_size == record_file.ciphertext_size

    with Measured() as ingest:
        # the store worker: the early add, asked too late, leaves the file to the ingest; then
        # the ingest into the DAG, the version stored and anchored
        celery_outbox.run_all()
    record_file.refresh_from_db()
    assert record_file.status == "stored" and spool_files() == []

    record = MedicalRecord.objects.get()
    url = reverse("record_file", args=[record.public_id, record_file.public_id]) + "?download=1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    received, total = hashlib.sha256(), 0
    with Measured() as download:
        connection.request("GET", url, headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        while chunk := response.read(MIB):
            received.update(chunk)
            total += len(chunk)
    connection.close()
    assert total == size and received.digest() == sent.digest()

    report = {
        name: f"{m.seconds:.1f} s, {size / m.seconds / 1e6:.0f} MB/s, heap peak {m.heap_peak / MIB:.1f} MiB, "
        f"RSS +{m.rss_growth / MIB:.1f} MiB"
        for name, m in (("upload", upload), ("ingest", ingest), ("download", download))
    }
    print("\n300 MB:", report)
    for name, m in (("upload", upload), ("ingest", ingest), ("download", download)):
        assert m.heap_peak < 32 * MIB, f"{name}: {report[name]}"
        assert m.rss_growth < 64 * MIB, f"{name}: {report[name]}"


# -- what a web process reads back --------------------------------------------------------------

SECONDARY_READ = """
import sys
from chain.core.blockstore import BlockStore
from chain.core.cid import CID

store = BlockStore(sys.argv[1], readonly_secondary=True)  # what chain.stores.open_secondary opens
root, segment = CID.decode(sys.argv[2]), 65536 + 16


def segments():  # the read pattern of a download: one segment at a time, from a generator
    position = 0
    while piece := b"".join(store.cat(root, position, segment)):
        position += len(piece)
        yield len(piece)


whole = sum(len(piece) for piece in store.cat(root))
print(whole, sum(segments()))
"""


@pytest.mark.django_db
def test_a_web_process_reads_a_stored_upload_through_a_secondary_instance(client, alice, node, settings):
    """DESIGN section 3: the store worker holds the primary; web processes read through secondaries."""
    settings.DAG_CHUNK_SIZE = MIB  # the production chunk size
    login(client, alice)
    data = pdf_bytes() + os.urandom(3 * MIB)  # big enough for RocksDB blob files
    body = multipart({"title": "Scan"}, [("scan.pdf", "application/pdf", data)])
    assert post_multipart(client, reverse("patient_upload"), body).status_code == 200
    record_file = RecordFile.objects.get()
    assert storage.file_ingest(record_file.pk) == "stored"  # this process now holds the primary
    record_file.refresh_from_db()
    web = subprocess.run(
        [sys.executable, "-c", SECONDARY_READ, str(settings.DAG_DIR), record_file.root_cid],
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert web.returncode == 0, f"the reading process died (exit {web.returncode}): {web.stderr[-2000:]}"
    assert web.stdout.split() == [str(record_file.ciphertext_size)] * 2


# -- what the CSRF check does to a spooled upload --------------------------------------------


@pytest.mark.django_db
def test_an_upload_refused_by_the_csrf_check_leaves_no_spool_file(alice, node):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    body = multipart({"title": "Scan"}, [("scan.png", "image/png", png_bytes())])
    response = post_multipart(client, reverse("patient_upload"), body)
    assert response.status_code == 403
    assert_nothing_stored()


# -- the plain HTML form (no script): a refusal is a page with its message, never a 500 ---------
def post_form(client: Client, url: str, body: bytes):
    return client.generic(
        "POST",
        url,
        body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_ACCEPT="text/html",
        HTTP_ACCEPT_LANGUAGE="en",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("filename", "data", "status", "message"),
    [
        ("report.pdf", WINDOWS_EXE, 415, "This kind of file is not accepted"),
        ("x" * 3000 + ".pdf", b"%PDF-1.4\n" + bytes(300), 400, "The file name is too long"),
        ("report.pdf", b"", 400, "The file is empty"),
    ],
    ids=["executable named .pdf", "3000-character name", "empty"],
)
def test_the_plain_form_answers_a_refusal_with_its_page(target, filename, data, status, message):
    client, url, fields, record = target
    response = post_form(client, url, multipart(fields, [(filename, "application/pdf", data)]))
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert message in response.content.decode()
    assert_nothing_stored(record)


@pytest.mark.django_db
def test_the_patient_form_keeps_the_typed_title_after_a_refusal(client, alice, node):
    login(client, alice)
    body = multipart({"title": "Knee MRI report"}, [("report.pdf", "application/pdf", WINDOWS_EXE)])
    response = post_form(client, reverse("patient_upload"), body)
    assert response.status_code == 415
    assert 'value="Knee MRI report"' in response.content.decode()
