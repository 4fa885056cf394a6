"""Sharing benchmark: re-keying throughput after a revocation, and a grant over many records.

Runs against a throwaway node (temporary ``EMR_DATA_DIR``, as ``records_bench``)
in one process that plays the store worker, and prints:

* **Re-keying throughput** (MB/s, 10**6 bytes per second): a ``--size-mib``
  file (default 64 MiB) in a stored, anchored record shared with a doctor;
  the grant is revoked and ``records.rekey.rekey_job_run`` re-keys it (stream
  decrypt from the DAG, re-encrypt, add to the DAG, new version stored and
  anchored). Compared with raw AES-256-GCM encryption of the same number of
  bytes in 64 KiB segments, measured in the same run.
* **Grant over ``--records`` records** (default 1,000): the time of one
  ``grant_issue`` (opening each data key with the patient's envelope and
  sealing it to the grantee).

Not measured yet: the access check with 10,000 records and 1,000 grants.

    .venv/bin/python bench/sharing_bench.py [--size-mib 64] [--records 1000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from records_bench import configure, setup_node  # noqa: E402

MB = 10**6


def raw_aes_gcm(size: int) -> float:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes = AESGCM(os.urandom(32))
    segment = os.urandom(64 * 1024)
    nonce = os.urandom(12)
    start = time.perf_counter()
    for _ in range(size // len(segment)):
        aes.encrypt(nonce, segment, None)
    return size / (time.perf_counter() - start) / MB


def spooled(size: int):
    from django.conf import settings

    from chain.core import stream
    from records.uploads import SpooledUpload

    stream_id = uuid.uuid4()
    key = stream.new_data_key()
    os.makedirs(settings.SPOOL_DIR, exist_ok=True)
    path = os.path.join(settings.SPOOL_DIR, f"{stream_id}.enc")
    encryptor = stream.Encryptor(key, associated_data=f"yilian/record-file/v1/{stream_id}".encode())
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        out.write(encryptor.header)
        for _ in range(size // len(block)):
            out.write(encryptor.update(block))
        out.write(encryptor.finalize())
    return SpooledUpload(
        stream_id=stream_id,
        name="big.bin",
        media_type="application/octet-stream",
        size=size // len(block) * len(block),
        ciphertext_size=os.path.getsize(path),
        path=path,
        file_key=key,
    )


def other_doctor():
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.utils import timezone

    from accounts.services import institution_create, user_create

    hospital = institution_create(code="south", kind="hospital", name="南院", name_en="South Hospital")
    doctor = user_create(email="dave@example.org", password=None, role="clinician", institution=hospital)
    doctor.verified_at = timezone.now()
    doctor.save(update_fields=["verified_at"])
    TOTP.activate(doctor, generate_totp_secret())
    return doctor


def issue(patient, grantee):
    from django.utils import timezone

    from records.sharing import grant_issue

    now = timezone.now()
    return grant_issue(
        patient=patient,
        grantee_user=grantee,
        scope="all",
        purpose="treatment",
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=30),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sharing-bench-"))
    configure(workdir)
    try:
        doctor, patient, visit = setup_node()
        from chain.ledger_services import chain_seal
        from records import storage
        from records.access import record_get_for_user
        from records.models import RecordFile, RecordVersion, RekeyJob
        from records.rekey import rekey_job_run
        from records.services import record_attach_file, record_create, record_finalize, record_finalize_imported
        from records.sharing import grant_revoke

        dave = other_doctor()
        chain_seal()

        # -- re-keying throughput
        size = args.size_mib << 20
        record = record_create(patient=patient, author=doctor, kind="imaging", content={"title": "CT"}, visit=visit)
        upload = spooled(size)
        access = record_get_for_user(doctor, record.public_id, action="upload")
        record_attach_file(access=access, upload=upload)
        for record_file in RecordFile.objects.filter(status="spooled"):
            storage.file_ingest(record_file.pk)
        record_finalize(access=record_get_for_user(doctor, record.public_id, action="finalize"))
        for version in RecordVersion.objects.filter(storage="pending"):
            storage.version_store(version.pk)
        chain_seal()
        grant = issue(patient, dave)
        grant_revoke(patient=patient, grant=grant)
        job = RekeyJob.objects.get(grant=grant)
        start = time.perf_counter()
        outcome = rekey_job_run(job.pk)
        elapsed = time.perf_counter() - start
        assert outcome == "done", outcome
        rekey_mbs = upload.size / elapsed / MB
        raw = raw_aes_gcm(upload.size)
        print(f"re-keying {args.size_mib} MiB: {elapsed:.2f} s, {rekey_mbs:.1f} MB/s")
        print(f"raw AES-256-GCM (64 KiB segments, same bytes): {raw:.1f} MB/s; ratio {rekey_mbs / raw:.2f}")

        # -- a grant over many records
        for index in range(args.records):
            made = record_create(
                patient=patient,
                author=doctor,
                kind="prescription",
                content={"title": f"Rx {index}"},
                visit=visit,
                imported=True,
            )
            record_finalize_imported(record=made)
        start = time.perf_counter()
        issue(patient, dave)
        elapsed = time.perf_counter() - start
        print(f"grant over {args.records + 1} records (key wrapping): {elapsed:.2f} s")
        print("access check with 10,000 records and 1,000 grants: not measured yet")
    finally:
        from chain import chainstore, stores

        stores.close_dag_stores()
        chainstore.close_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
