"""Sharing benchmark: re-keying throughput after a revocation, and a grant over many records.

Runs against a throwaway node (temporary ``EMR_DATA_DIR``, as ``records_bench``)
in one process that plays the store worker, and prints:

* **Re-keying throughput** (MB/s, 10**6 bytes per second): a ``--size-mib``
  file (default 64 MiB) in a stored, anchored record shared with a doctor;
  the grant is revoked and ``records.sharing.rekey.rekey_job_run`` re-keys it (stream
  decrypt from the DAG, re-encrypt, add to the DAG, new version stored and
  anchored), ``--repeat`` times (a new grant revoked each time): the median
  and every run. Compared with the floor of the upload benchmark measured in
  the same run: AES-256-GCM (64 KiB segments) plus SHA-256 over the same
  number of distinct bytes, on one core (``records_bench.crypto_floor``).
* **Grant over ``--records`` records** (default 1,000): the time of one
  ``grant_issue`` (opening each data key with the patient's envelope and
  sealing it to the grantee).
* **Access check with 10,000 records and 1,000 grants**: median and p99 time
  of ``records.policy.record_get_for_user(quiet=True)`` for a verified
  clinician with TOTP, over ``--checks`` calls (default 2,000) on random
  records a grant lets her open and a quarter as many on records she may not
  (``RecordAccessDenied``, audited), and the queries per call (min and max:
  the helper promises a constant number). The same is printed at 100 records
  and 10 grants, so the counts can be compared. The fixtures are bulk-created
  (a real data key sealed per version, no chain transactions for the grants)
  over 12 patients: each gave the clinician one grant of a different shape
  (to her or her institution; all, kinds or chosen records; sensitive
  included or not; revoked, expired or not yet valid) or none, and the rest
  are grants to other clinicians and institutions, or dead ones to her. It
  runs first, while the node holds nothing else, so the sizes are exact. No
  data key is opened: the figure is the decision and the key lookup.

    .venv/bin/python bench/sharing_bench.py [--size-mib 64] [--records 1000] [--checks 2000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpuwindow import CpuWindow  # noqa: E402
from records_bench import configure, crypto_floor, setup_node, stop_node  # noqa: E402

MB = 10**6
MIB = 1 << 20


def spooled(size: int):
    from django.conf import settings

    from chain.core import stream
    from records.clinical.uploads import SpooledUpload

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


def cleared_clinician(*, code: str, name: str, name_en: str, email: str):
    """A verified clinician with TOTP on, at a new hospital of her own."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.utils import timezone

    from accounts.services import institution_create, user_create

    hospital = institution_create(code=code, kind="hospital", name=name, name_en=name_en)
    doctor = user_create(email=email, password=None, role="clinician", institution=hospital)
    doctor.verified_at = timezone.now()
    doctor.save(update_fields=["verified_at"])
    TOTP.activate(doctor, generate_totp_secret())
    return doctor


def other_doctor():
    return cleared_clinician(code="south", name="南院", name_en="South Hospital", email="dave@example.org")


def issue(patient, grantee):
    from django.utils import timezone

    from records.sharing.grants import grant_issue

    now = timezone.now()
    return grant_issue(
        patient=patient,
        grantee_user=grantee,
        scope="all",
        purpose="treatment",
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=30),
    )


# -- access check -----------------------------------------------------------------------------

PATIENTS = 12
# The grant patient i gave Erin (to her or her institution, scope, state, sensitive included);
# patients past the list gave her none. Ten grants: the small size holds exactly these.
ERIN_GRANTS = [
    ("user", "all", "active", False),
    ("institution", "all", "active", False),
    ("user", "kinds", "active", False),
    ("institution", "kinds", "active", False),
    ("user", "records", "active", False),
    ("institution", "records", "active", False),
    ("user", "all", "revoked", False),
    ("institution", "all", "expired", False),
    ("user", "all", "active", True),
    ("user", "all", "pending", False),
]
ERIN_KINDS = ["lab_report", "imaging"]
KINDS = ["prescription", "lab_report", "pathology", "imaging", "note"]


@dataclass
class AccessFixture:
    author: object
    erin: object
    patients: list
    clinicians: list
    institutions: list
    rng: random.Random
    records: dict[int, list[int]] = field(default_factory=dict)  # patient index -> record pks
    erin_grants: dict[int, object] = field(default_factory=dict)  # patient index -> her grant from them
    allowed: list[uuid.UUID] = field(default_factory=list)
    denied: list[uuid.UUID] = field(default_factory=list)


def access_fixture(author) -> AccessFixture:
    """Erin (the clinician checked), 12 patients, and 24 other clinicians at 4 other hospitals."""
    from accounts.services import institution_create, user_create

    erin = cleared_clinician(code="east", name="东院", name_en="East Hospital", email="erin@example.org")
    patients = [
        user_create(email=f"patient{n}@example.org", password=None, role="patient", name=f"Patient {n}")
        for n in range(PATIENTS)
    ]
    institutions = [
        institution_create(code=f"bench-{n}", kind="clinic", name=f"诊所{n}", name_en=f"Clinic {n}") for n in range(4)
    ]
    clinicians = [
        user_create(email=f"clinician{n}@example.org", password=None, role="clinician", institution=institutions[n % 4])
        for n in range(24)
    ]
    return AccessFixture(
        author=author,
        erin=erin,
        patients=patients,
        clinicians=clinicians,
        institutions=institutions,
        rng=random.Random(20261129),
    )


def _erin_covers(spec, *, kind: str, sensitive: bool, named: bool) -> bool:
    """``records.policy.grant_in_scope`` for the fixture's own plan (status and window aside)."""
    _to, scope, _state, include_sensitive = spec
    if sensitive and not (named or include_sensitive):
        return False
    if scope == "all":
        return True
    if scope == "kinds":
        return kind in ERIN_KINDS
    return named


def _window(state: str, now):
    """valid_from, valid_until, status, revoked_at for a grant in ``state``."""
    if state == "expired":
        return now - timedelta(days=60), now - timedelta(days=30), "active", None
    if state == "pending":
        return now + timedelta(days=1), now + timedelta(days=30), "active", None
    if state == "revoked":
        return now - timedelta(days=10), now + timedelta(days=20), "revoked", now - timedelta(hours=1)
    return now - timedelta(days=1), now + timedelta(days=30), "active", None


def _grant(
    fx: AccessFixture,
    *,
    patient_index: int,
    scope: str,
    state: str,
    now,
    user=None,
    institution=None,
    kinds=(),
    include_sensitive=False,
    purpose="treatment",
):
    from records.models import Grant

    valid_from, valid_until, status, revoked_at = _window(state, now)
    return Grant(
        chain_id=os.urandom(16),
        patient=fx.patients[patient_index],
        grantee_user=user,
        grantee_institution=institution,
        scope=scope,
        kinds=list(kinds),
        include_sensitive=include_sensitive,
        purpose=purpose,
        valid_from=valid_from,
        valid_until=valid_until,
        status=status,
        revoked_at=revoked_at,
        created_at=valid_from,
        pseudonym=os.urandom(32).hex(),
    )


def _grow_records(fx: AccessFixture, count: int, now) -> list[tuple[int, int]]:
    """``count`` more final records, one version each, sealed to the patient, the author, the author's
    hospital and Erin (or her hospital) where her grant covers them; returns (patient index, record pk)
    of those her chosen-records grants name."""
    from chain.core import stream
    from records.keys import seal_for
    from records.models import MedicalRecord, RecordVersion, WrappedKey

    rng, author, erin = fx.rng, fx.author, fx.erin
    start = sum(len(pks) for pks in fx.records.values())
    plan = []
    for n in range(start, start + count):
        patient_index = n % PATIENTS
        kind = rng.choice(KINDS)
        sensitive = rng.random() < 0.05
        spec = ERIN_GRANTS[patient_index] if patient_index < len(ERIN_GRANTS) else None
        named = spec is not None and spec[1] == "records" and rng.random() < 1 / 3
        covered = spec is not None and _erin_covers(spec, kind=kind, sensitive=sensitive, named=named)
        plan.append((patient_index, kind, sensitive, named, spec, covered))
    records = MedicalRecord.objects.bulk_create(
        MedicalRecord(
            anchor_id=os.urandom(16),
            patient=fx.patients[patient_index],
            institution_id=author.institution_id,
            author=author,
            kind=kind,
            status=MedicalRecord.Status.FINAL,
            sensitive=sensitive,
            created_at=now,
            updated_at=now,
        )
        for patient_index, kind, sensitive, *_ in plan
    )
    versions = RecordVersion.objects.bulk_create(
        RecordVersion(
            record=record,
            number=1,
            created_by=author,
            created_at=now,
            finalized_at=now,
            content_ciphertext=os.urandom(96),
            content_size=96,
            storage=RecordVersion.Storage.STORED,
        )
        for record in records
    )
    keys, named_pks = [], []
    for record, version, (patient_index, _kind, _sensitive, named, spec, covered) in zip(
        records, versions, plan, strict=True
    ):
        record.current_version = version
        users, institutions = [record.patient, author], [author.institution]
        # grant_issue sealed it to the grantee; kept after expiry or revocation, as the grant must decide.
        if covered and spec[0] == "user":
            users.append(erin)
        elif covered:
            institutions.append(erin.institution)
        keys += seal_for(version, stream.new_data_key(), users=users, institutions=institutions)
        fx.records.setdefault(patient_index, []).append(record.pk)
        if named:
            named_pks.append((patient_index, record.pk))
        (fx.allowed if covered and spec[2] == "active" else fx.denied).append(record.public_id)
    MedicalRecord.objects.bulk_update(records, ["current_version"])
    WrappedKey.objects.bulk_create(keys)
    return named_pks


def _other_grant(fx: AccessFixture, now):
    """A grant that changes nothing for Erin: to someone else, dead, or overlapping one she has."""
    rng, erin = fx.rng, fx.erin
    roll = rng.random()
    if roll < 0.04:  # live and overlapping: a subset of what her grant from patient 0 or 1 already opens
        if rng.random() < 0.5:
            grant = _grant(
                fx,
                patient_index=0,
                institution=erin.institution,
                scope="kinds",
                kinds=ERIN_KINDS,
                state="active",
                now=now,
            )
        else:
            grant = _grant(fx, patient_index=1, user=erin, scope="all", state="active", now=now)
        return grant, []
    patient_index = rng.randrange(PATIENTS)
    if roll < 0.14:  # dead grants to Erin or her institution
        to = {"user": erin} if rng.random() < 0.5 else {"institution": erin.institution}
        state = rng.choice(["revoked", "expired"])
    else:
        to = {"user": rng.choice(fx.clinicians)} if rng.random() < 0.6 else {"institution": rng.choice(fx.institutions)}
        state = rng.choices(["active", "revoked", "expired", "pending"], weights=[70, 12, 12, 6])[0]
    scope = rng.choice(["all", "kinds", "records"])
    named = (
        rng.sample(fx.records[patient_index], k=min(5, len(fx.records[patient_index]))) if scope == "records" else []
    )
    grant = _grant(
        fx,
        patient_index=patient_index,
        scope=scope,
        kinds=rng.sample(KINDS, k=rng.randint(1, 3)) if scope == "kinds" else (),
        include_sensitive=rng.random() < 0.2,
        purpose=rng.choice(["treatment", "treatment", "second_opinion", "research"]),
        state=state,
        now=now,
        **to,
    )
    return grant, named


def grow(fx: AccessFixture, *, records: int, grants: int) -> None:
    """Add records and grants until the node holds ``records`` and ``grants`` of them."""
    from django.db import transaction
    from django.utils import timezone

    from records.models import Grant, MedicalRecord

    now = timezone.now()
    through = Grant.records.through
    with transaction.atomic():
        named = _grow_records(fx, records - MedicalRecord.objects.count(), now)
        if not fx.erin_grants:
            erin = fx.erin
            for i, (to, scope, state, sensitive) in enumerate(ERIN_GRANTS):
                fx.erin_grants[i] = _grant(
                    fx,
                    patient_index=i,
                    scope=scope,
                    kinds=ERIN_KINDS if scope == "kinds" else (),
                    include_sensitive=sensitive,
                    state=state,
                    now=now,
                    **({"user": erin} if to == "user" else {"institution": erin.institution}),
                )
            Grant.objects.bulk_create(fx.erin_grants.values())
        others = [_other_grant(fx, now) for _ in range(grants - Grant.objects.count())]
        Grant.objects.bulk_create([grant for grant, _named in others])
        through.objects.bulk_create(
            [through(grant_id=fx.erin_grants[i].pk, medicalrecord_id=pk) for i, pk in named]
            + [through(grant_id=grant.pk, medicalrecord_id=pk) for grant, pks in others for pk in pks]
        )


def check(user, record_id) -> bool:
    from records.policy import RecordAccessDenied, record_get_for_user

    try:
        access = record_get_for_user(user, record_id, quiet=True)
    except RecordAccessDenied:
        return False
    if access.basis != "grant":
        raise SystemExit(f"access check: {record_id} opened by {access.basis}, not a grant")
    return True


def measure(fx: AccessFixture, *, checks: int) -> tuple[dict[bool, list[float]], dict[bool, list[int]]]:
    """Seconds and queries per call, keyed by allowed (True) or denied (False)."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    rng = random.Random(checks)
    plan = [(rid, True) for rid in rng.choices(fx.allowed, k=checks)]
    plan += [(rid, False) for rid in rng.choices(fx.denied, k=checks // 4)]
    rng.shuffle(plan)
    for record_id, _allowed in plan[:50]:  # warm-up
        check(fx.erin, record_id)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for record_id, allowed in plan:
        start = time.perf_counter()
        outcome = check(fx.erin, record_id)
        seconds[allowed].append(time.perf_counter() - start)
        if outcome != allowed:
            raise SystemExit(f"access check: {record_id} {'denied' if allowed else 'allowed'}, expected otherwise")
    # Counted in a second pass: capturing queries slows each one down.
    queries: dict[bool, list[int]] = {True: [], False: []}
    for record_id, allowed in plan:
        reset_queries()  # the log keeps 9,000 queries; a full one would count nothing
        with CaptureQueriesContext(connection) as captured:
            check(fx.erin, record_id)
        queries[allowed].append(len(captured.captured_queries))
    return seconds, queries


def report(label: str, seconds: dict[bool, list[float]], queries: dict[bool, list[int]]) -> None:
    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {statistics.quantiles(values, n=100)[98] * 1000:.2f} ms ({len(values):,} calls)"
        )

    print(f"access check, {label}: allowed {ms(seconds[True])}; denied {ms(seconds[False])}")
    print(
        f"access check, {label}: queries per call allowed min {min(queries[True])} max {max(queries[True])}, "
        f"denied min {min(queries[False])} max {max(queries[False])}"
    )


def access_check_bench(author, *, checks: int) -> None:
    from records.models import Grant, MedicalRecord

    fx = access_fixture(author)
    for records, grants in ((100, 10), (10_000, 1_000)):
        grow(fx, records=records, grants=grants)
        label = f"{MedicalRecord.objects.count():,} records and {Grant.objects.count():,} grants"
        report(label, *measure(fx, checks=checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument(
        "--checks", type=int, default=2000, help="allowed access checks timed (a quarter as many denied)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="re-keying runs (a new revocation each)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sharing-bench-"))
    configure(workdir)
    try:
        doctor, patient, visit = setup_node()
        from chain.ledger_services import chain_seal
        from records.clinical import storage
        from records.clinical.services import (
            record_attach_file,
            record_create,
            record_finalize,
            record_finalize_imported,
        )
        from records.models import RecordFile, RecordVersion, RekeyJob
        from records.policy import record_get_for_user
        from records.sharing.grants import grant_revoke
        from records.sharing.rekey import rekey_job_run

        dave = other_doctor()
        # -- the access check, first: the node then holds exactly the records and grants it counts
        access_check_bench(doctor, checks=args.checks)
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
        runs, windows = [], []
        for _ in range(args.repeat):
            for _round in range(4):  # the last run's new version stored and anchored, as the store worker would
                for record_file in RecordFile.objects.filter(status="spooled"):
                    storage.file_ingest(record_file.pk)
                for version in RecordVersion.objects.filter(storage="pending"):
                    storage.version_store(version.pk)
                chain_seal()
            grant = issue(patient, dave)
            grant_revoke(patient=patient, grant=grant)
            job = RekeyJob.objects.get(grant=grant)
            with CpuWindow() as cpu:
                start = time.perf_counter()
                outcome = rekey_job_run(job.pk)
                runs.append(upload.size / (time.perf_counter() - start) / MB)
            windows.append(cpu)
            assert outcome == "done", (outcome, RekeyJob.objects.get(pk=job.pk).error)
        rekey_mbs = statistics.median(runs)
        aes, sha, _digest = crypto_floor(upload.size, os.urandom(MIB))
        floor = upload.size / (aes + sha) / MB
        print(
            f"re-keying {args.size_mib} MiB: {rekey_mbs:.1f} MB/s median (runs: {' '.join(f'{r:.0f}' for r in runs)})"
        )
        print(
            f"floor AES-256-GCM + SHA-256, same bytes, one core: {floor:.1f} MB/s "
            f"(AES {upload.size / aes / MB:.0f}, SHA-256 {upload.size / sha / MB:.0f}); ratio {rekey_mbs / floor:.2f}"
        )
        print(f"  CPU over the re-keying runs: {CpuWindow.combined(windows).summary()}")

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
    finally:
        stop_node(None, workdir, keep=args.keep)


if __name__ == "__main__":
    main()
