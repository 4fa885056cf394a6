"""Records benchmark: a big upload to stored-and-anchored, and the patient timeline.

Runs against a throwaway node (temporary ``EMR_DATA_DIR``: SQLite, RocksDB,
spool, filesystem broker) and prints MB/s (10**6 bytes per second):

* **Upload to stored-and-anchored.** A gunicorn process serves the site; a
  verified doctor with TOTP streams a ``--size-mib`` file (default 256 MiB)
  into an imaging draft over real HTTP from a child process, as a client
  elsewhere (the raw body the portal's script sends, or ``--multipart``; the
  body a generator, so neither side holds it), then signs and finalises it
  over HTTP. This process plays the store worker (DESIGN section 3: the only
  RocksDB writer): while the upload runs, a thread takes the store queue's
  messages from the broker and runs the early add the upload asks for
  (``records.clinical.storage.upload_ingest_early``); after it,
  ``file_ingest`` (which takes the early add's pin, or adds the spool file),
  ``version_store`` (stores the finalised version and submits its anchor) and
  ``chain_seal``. The clock runs from the first byte of the request until the
  anchor transaction is in a sealed block.
  Target: >= 150 MB/s end to end. The floor it is compared with is
  AES-256-GCM (64 KiB segments, as the stream format) plus SHA-256 over the
  same bytes, measured in the same run on one core.
* **Download** of the same file through gunicorn (a secondary DAG instance,
  decrypted on the fly), checked against the uploaded bytes' SHA-256.
* **Patient timeline with 1,000 records** (``--records``): median render time
  of ``/patient/`` over ``--requests`` requests through the Django test client,
  and the number of queries per request; the clinic chart likewise.

    .venv/bin/python bench/records_bench.py [--size-mib 256] [--records 1000] [--requests 20] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cpuwindow import CpuWindow
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
SEGMENT = 64 * 1024
BOUNDARY = "records-bench-" + os.urandom(12).hex()
TARGET_MBS = 150


# -- environment ---------------------------------------------------------------------------


def configure(workdir: Path) -> dict[str, str]:
    """The environment both this process and the web server run with."""
    env = {k: v for k, v in os.environ.items() if k not in _STEERING}
    env.update(
        DJANGO_SETTINGS_MODULE="emr_site.settings",
        EMR_DATA_DIR=str(workdir),
        EMR_ENV="development",
        CELERY_BROKER_URL="filesystem://",
        LOG_LEVEL="WARNING",
    )
    os.environ.clear()
    os.environ.update(env)
    return env


# Variables that would point the throwaway node at real services or other stores.
_STEERING = {
    "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_ALWAYS_EAGER", "DAG_DIR",
    "CHAIN_DIR", "SPOOL_DIR", "EMR_KEK_FILE", "SECRET_KEY", "UPLOAD_MAX_BYTES", "EMR_DEBUG", "EMR_TEST_DB_FILE",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(env: dict[str, str], workdir: Path, *, workers: int = 1) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(workdir / "gunicorn.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "emr_site.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--timeout", "900", "--log-level", "warning",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited ({server.returncode}); see {workdir / 'gunicorn.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, port
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("gunicorn did not start within 60 s")


def stop_node(server: subprocess.Popen | None, workdir: Path, *, keep: bool = False) -> None:
    """Stop the web server, close this process's stores and remove the throwaway node (unless ``keep``)."""
    if server is not None:
        server.terminate()
        server.wait(timeout=30)
    try:
        from chain import chainstore, stores

        stores.close_dag_stores()
        chainstore.close_all()
    except Exception:  # noqa: S110 - Django may not have been set up
        pass
    if keep:
        print(f"data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def setup_node():
    """Migrate, make the genesis block, a hospital, a doctor with TOTP, a patient, a visit."""
    import django

    django.setup()
    from allauth.account.models import EmailAddress
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.core.management import call_command
    from django.utils import timezone

    from accounts.services import institution_create, user_create
    from chain.ledger_services import chain_ensure_genesis, chain_seal
    from records.clinical.services import visit_open

    call_command("migrate", verbosity=0)
    chain_ensure_genesis()
    hospital = institution_create(code="north", kind="hospital", name="北院", name_en="North Hospital")
    doctor = user_create(email="doctor@example.org", password=None, role="clinician", institution=hospital)
    doctor.verified_at = timezone.now()
    doctor.save(update_fields=["verified_at"])
    TOTP.activate(doctor, generate_totp_secret())
    patient = user_create(email="patient@example.org", password=None, role="patient", name="Alice")
    for user in (doctor, patient):
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    chain_seal()  # the key registrations, so the timed seal is the anchor's
    visit = visit_open(clinician=doctor, patient=patient)
    return doctor, patient, visit


def session_headers(user) -> dict[str, str]:
    from django.conf import settings
    from django.middleware.csrf import _get_new_csrf_string
    from django.test import Client

    client = Client()
    client.force_login(user)
    token = _get_new_csrf_string()
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}; "
        f"{settings.CSRF_COOKIE_NAME}={token}",
        "X-CSRFToken": token,
        "Accept": "application/json",
    }


# -- the bytes -------------------------------------------------------------------------------


def content(size: int, block: bytes) -> Iterator[bytes]:
    """``size`` bytes of a DICOM-looking file in 1 MiB pieces, each distinct, made on the fly."""
    position = 0
    while position < size:
        piece = block[: min(MIB, size - position)]
        if position == 0:
            piece = bytes(128) + b"DICM" + piece[132:]
        else:
            piece = position.to_bytes(8, "big") + piece[8:]
        position += len(piece)
        yield piece


def crypto_floor(size: int, block: bytes) -> tuple[float, float, str]:
    """Seconds for AES-256-GCM (64 KiB segments) and for SHA-256 over the same bytes; their digest."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = bytes(12)  # benchmark only: a real nonce is never reused
    aes = sha = 0.0
    digest = hashlib.sha256()
    for piece in content(size, block):
        view = memoryview(piece)
        start = time.perf_counter()
        for pos in range(0, len(view), SEGMENT):
            aead.encrypt(nonce, view[pos : pos + SEGMENT], b"bench")
        middle = time.perf_counter()
        digest.update(piece)
        sha += time.perf_counter() - middle
        aes += middle - start
    return aes, sha, digest.hexdigest()


# -- upload to stored-and-anchored --------------------------------------------------------------


def upload_to_anchor(port: int, doctor, patient, visit, size: int, block: bytes, multipart: bool = False) -> dict:
    """Stream the file in, finalise, ingest, store, anchor, seal; the clock marks of each step."""
    from django.urls import reverse

    from chain.ledger_services import chain_seal
    from chain.models import Transaction
    from records.clinical import storage
    from records.clinical.services import record_create
    from records.models import RecordFile, RecordVersion

    record = record_create(
        patient=patient,
        author=doctor,
        kind="imaging",
        content={"title": "MRI brain", "modality": "MR", "body_site": "Head", "findings": "Bench"},
        visit=visit,
    )
    headers = session_headers(doctor)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="series.dcm"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        if multipart:
            yield head
        yield from content(size, block)
        if multipart:
            yield tail

    if multipart:
        upload_headers = {
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
    else:  # what the portal's JavaScript sends: the file as the raw body
        upload_headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "X-Upload-Name": "series.dcm",
            "Accept": "application/json",
        }

    marks = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    connection.request("GET", reverse("record_edit", args=[record.public_id]), headers=headers)  # warm the worker
    warm = connection.getresponse()
    warm.read()
    if warm.status != 200:
        raise SystemExit(f"warm-up request failed: {warm.status}")
    storage._dag().start_helper()  # as a running store worker's are, after its first large file
    store_worker = EarlyAdds()
    store_worker.start()
    cpu = CpuWindow().start()  # every process: client, web worker, store worker, SST helpers
    marks["start"] = time.perf_counter()
    status, payload = in_a_process(
        send_upload, port, reverse("record_file_upload", args=[record.public_id]), body, {**headers, **upload_headers}
    )
    marks["uploaded"] = time.perf_counter()
    if status != 200:
        raise SystemExit(f"upload failed: {status} {payload[:500]!r}")
    if json.loads(payload)["files"][0]["size"] != size:
        raise SystemExit(f"upload answered for other bytes: {payload[:500]!r}")
    connection.request("POST", reverse("record_finalize", args=[record.public_id]), body=b"", headers=headers)
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    marks["finalised"] = time.perf_counter()
    finalised = response.status == 302 or (response.status == 200 and json.loads(answer).get("ok"))
    if not finalised:  # a redirect for a browser's form, JSON for the portal's script
        raise SystemExit(f"finalise failed: {response.status} {answer[:500]!r}")

    # The store worker's part.
    record_file = RecordFile.objects.get(version__record=record)
    # (the store worker's early add may still be at work: file_ingest waits for it, as in the worker)
    outcome = storage.file_ingest(record_file.pk)  # stored already when the early add ended after the upload
    for pending in RecordVersion.objects.filter(record=record, storage="pending"):
        storage.version_store(pending.pk)  # what finalising asked the store worker for
    marks["ingested"] = time.perf_counter()
    seal = chain_seal()
    marks["anchored"] = time.perf_counter()
    cpu.stop()
    early = store_worker.stop()

    version = RecordVersion.objects.get(record=record)
    sealed = Transaction.objects.filter(cid=version.anchor_tx).select_related("block").first()
    if outcome != "stored" or version.storage != "stored" or sealed is None:
        raise SystemExit(f"not stored and anchored: ingest {outcome!r}, version {version.storage!r}, seal {seal}")
    record_file.refresh_from_db()
    return {
        "marks": marks,
        "early": early,
        "height": sealed.block.height,
        "record": record,
        "record_file": record_file,
        "ciphertext": record_file.ciphertext_size,
        "cpu": cpu,
    }


def send_upload(port: int, path: str, body, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    connection.request("POST", path, body=body(), headers=headers)
    response = connection.getresponse()
    answer = response.status, response.read()
    connection.close()
    return answer


def in_a_process(function, *args):
    """``function(*args)`` in a child process (forked), as a client elsewhere: it shares no GIL with this one."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)

    def child() -> None:
        sending.send(function(*args))

    process = context.Process(target=child)
    process.start()
    answer = receiving.recv()
    process.join()
    return answer


class EarlyAdds(threading.Thread):
    """The store worker's part during the upload: the early add the upload asks for, taken from the broker.

    The web process sends ``store.records_ingest_upload`` once the upload is
    large; this thread takes the store queue's messages as the worker would
    and runs that one (``storage.upload_ingest_early``) while the upload goes
    on. :meth:`stop` returns the early add's outcomes once they are done.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._stopping = threading.Event()
        self._running: list[threading.Thread] = []
        self.outcomes: list[str] = []

    def run(self) -> None:
        import queue

        from django.db import connection

        from emr_site.celery import app

        with app.connection_for_read() as broker:
            store = broker.SimpleQueue("store", no_ack=True)
            while not self._stopping.is_set():
                try:
                    message = store.get(timeout=0.01)
                except queue.Empty:
                    continue
                if message.headers.get("task") == "store.records_ingest_upload":
                    args = message.payload[0]
                    thread = threading.Thread(target=self._add, args=args)
                    thread.start()
                    self._running.append(thread)
            store.close()
        connection.close()

    def _add(self, stream_id: str) -> None:
        from django.db import connection

        from records.clinical import storage

        try:
            started = time.perf_counter()
            self.outcomes.append(storage.upload_ingest_early(stream_id))
            self.times = (started, time.perf_counter())
        finally:
            connection.close()

    def stop(self) -> list[str]:
        self._stopping.set()
        self.join()
        for thread in self._running:
            thread.join()
        return self.outcomes


def worker_deaths() -> str:
    from django.conf import settings

    lines: list[str] = []
    deadline = time.monotonic() + 5  # the arbiter reports a dead worker within a second or so
    while not lines and time.monotonic() < deadline:
        time.sleep(0.2)
        log = (Path(settings.DATA_DIR) / "gunicorn.log").read_text(errors="replace")
        lines = [line.strip() for line in log.splitlines() if "Worker (pid" in line or "Fatal Python" in line]
    return " | ".join(lines) or "no worker death logged"


def download(port: int, doctor, result: dict, expected: str) -> tuple[float, bool | str]:
    from django.urls import reverse

    headers = session_headers(doctor)
    url = reverse("record_file", args=[result["record"].public_id, result["record_file"].public_id]) + "?download=1"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    received = hashlib.sha256()
    start = time.perf_counter()
    try:
        connection.request("GET", url, headers=headers)
        response = connection.getresponse()
        while chunk := response.read(MIB):
            received.update(chunk)
    except (http.client.HTTPException, OSError) as exc:
        return time.perf_counter() - start, f"FAILED: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    return seconds, response.status == 200 and received.hexdigest() == expected


# -- the timeline ------------------------------------------------------------------------------


def make_records(doctor, patient, visit, count: int) -> float:
    from django.db import transaction

    from records.clinical.services import record_create

    kinds = [
        ("prescription", {"title": "Amoxicillin", "medications": [{"name": "Amoxicillin", "dose": "500 mg"}]}),
        ("lab_report", {"title": "Full blood count", "observations": [{"name": "Hb", "value": "135", "unit": "g/L"}]}),
        ("note", {"title": "Follow-up", "text": "Doing well."}),
        ("imaging", {"title": "Chest X-ray", "modality": "CR", "body_site": "Chest", "findings": "Clear"}),
        ("pathology", {"title": "Biopsy", "specimen": "Skin", "diagnosis": "Benign naevus", "findings": "-"}),
    ]
    start = time.perf_counter()
    with transaction.atomic():
        for index in range(count):
            if index % 10 == 9:
                record_create(patient=patient, author=patient, kind="document", content={"title": f"Scan {index}"})
            else:
                kind, body = kinds[index % len(kinds)]
                record_create(
                    patient=patient, author=doctor, kind=kind, content={**body, "title": f"{body['title']} {index}"},
                    visit=visit,
                )  # fmt: skip
    return time.perf_counter() - start


def render_times(user, url: str, requests: int) -> tuple[list[float], int, int]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user)
    for _ in range(2):  # warm caches, templates, translations
        client.get(url)
    times, queries = [], set()
    for _ in range(requests):
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"{url}: {response.status_code}")
        queries.add(len(captured))
    return times, max(queries), len(response.content)


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="upload size in MiB (default 256)")
    parser.add_argument("--records", type=int, default=1000, help="records on the timeline (default 1000)")
    parser.add_argument("--requests", type=int, default=20, help="timed timeline requests (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument(
        "--multipart",
        action="store_true",
        help="upload as a multipart form (the no-JavaScript path) instead of a raw body",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="records-bench-"))
    env = configure(workdir)
    server = None
    try:
        doctor, patient, visit = setup_node()
        server, port = start_gunicorn(env, workdir)
        run(args, port, doctor, patient, visit)
    finally:
        stop_node(server, workdir, keep=args.keep)


def run(args: argparse.Namespace, port: int, doctor, patient, visit) -> None:
    from django.urls import reverse

    size = args.size_mib * MIB
    block = os.urandom(MIB)
    mb = size / 1e6
    print(f"records bench: {args.size_mib} MiB upload ({mb:.1f} MB), {os.cpu_count()} CPUs; MB = 1e6 B")

    aes, sha, digest = crypto_floor(size, block)
    floor = mb / (aes + sha)
    print(f"AES-256-GCM (64 KiB)     {mb / aes:8.0f} MB/s")
    print(f"SHA-256                  {mb / sha:8.0f} MB/s")
    print(f"AES-GCM + SHA-256 floor  {floor:8.0f} MB/s  (one core, same bytes)")

    result = upload_to_anchor(port, doctor, patient, visit, size, block, multipart=args.multipart)
    m = result["marks"]
    total = m["anchored"] - m["start"]
    e2e = mb / total
    verdict = "ok" if e2e >= TARGET_MBS else f"BELOW {TARGET_MBS}"
    uploading = m["uploaded"] - m["start"]
    print(f"  upload over HTTP       {mb / uploading:8.0f} MB/s  ({uploading:.2f} s, encrypted into the spool; "
          f"early add while it arrived: {', '.join(result['early']) or 'not asked'})")  # fmt: skip
    print(f"  sign and finalise      {(m['finalised'] - m['uploaded']) * 1000:8.1f} ms")
    print(f"  ingest + store/anchor  {mb / (m['ingested'] - m['finalised']):8.0f} MB/s  "
          f"({m['ingested'] - m['finalised']:.2f} s, spool -> DAG, version stored, anchor submitted)")  # fmt: skip
    print(f"  seal                   {(m['anchored'] - m['ingested']) * 1000:8.1f} ms  (block {result['height']})")
    print(f"upload -> stored+anchored {e2e:7.0f} MB/s  [{verdict}]  ({total:.2f} s; "
          f"{e2e / floor:.2f} x the AES-GCM + SHA-256 floor)")  # fmt: skip
    print(f"  CPU over it: {result['cpu'].summary()}")

    seconds, intact = download(port, doctor, result, digest)
    if isinstance(intact, str):
        print(f"download over HTTP       {intact}")
        print(f"  web server log: {worker_deaths()}")
    else:
        print(f"download over HTTP       {mb / seconds:8.0f} MB/s  ({seconds:.2f} s, "
              f"{'bytes match' if intact else 'MISMATCH'})")  # fmt: skip

    made = make_records(doctor, patient, visit, args.records)
    print(f"{args.records} records created in {made:.1f} s ({made / args.records * 1000:.1f} ms each)")
    times, queries, length = render_times(patient, reverse("patient_home"), args.requests)
    print(
        f"patient timeline         {statistics.median(times) * 1000:8.1f} ms median  "
        f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}; {args.requests} requests, "
        f"{queries} queries, {length // 1024} KiB)"
    )
    chart = reverse("clinic_chart", args=[patient.public_id])
    times, queries, length = render_times(doctor, chart, args.requests)
    print(
        f"clinic patient chart     {statistics.median(times) * 1000:8.1f} ms median  "
        f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}; {args.requests} requests, "
        f"{queries} queries, {length // 1024} KiB)"
    )


if __name__ == "__main__":
    main()
