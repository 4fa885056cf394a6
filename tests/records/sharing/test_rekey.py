"""Re-keying after a revocation: new keys the revoked grantee never held, resumable, idempotent."""

from __future__ import annotations

import io
import os
import uuid

import pytest
from django.conf import settings
from django.urls import reverse

from chain.core import stream
from chain.core.cid import CID
from chain.core.errors import CryptoError
from chain.ledger_services import chain_seal
from chain.models import Transaction as TxRow
from chain.stores import dag_writer
from records.clinical import storage
from records.clinical.reading import SequentialReader, file_chunks
from records.clinical.services import record_attach_file, record_create, record_finalize
from records.clinical.uploads import SpooledUpload
from records.keys import decrypt_content, open_dek, unwrap_file_key
from records.models import MedicalRecord, RecordFile, RecordVersion, RekeyItem, RekeyJob, WrappedKey
from records.policy import record_get_for_user
from records.sharing import rekey
from records.sharing.grants import grant_revoke, grants_redrive
from tests.records.conftest import login
from tests.records.sharing.test_grants import issue, keys_sealed, write  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db


def ingest_all():
    for record_file in RecordFile.objects.filter(status="spooled"):
        storage.file_ingest(record_file.pk)
    for version in RecordVersion.objects.filter(storage="pending").order_by("number"):
        storage.version_store(version.pk)


def spooled(data: bytes, name: str = "scan.bin") -> SpooledUpload:
    stream_id = uuid.uuid4()
    key = stream.new_data_key()
    os.makedirs(settings.SPOOL_DIR, exist_ok=True)
    path = os.path.join(settings.SPOOL_DIR, f"{stream_id}.enc")
    with open(path, "wb") as out:
        stream.encrypt_stream(key, io.BytesIO(data), out, associated_data=f"yilian/record-file/v1/{stream_id}".encode())
    return SpooledUpload(
        stream_id=stream_id,
        name=name,
        media_type="application/octet-stream",
        size=len(data),
        ciphertext_size=os.path.getsize(path),
        path=path,
        file_key=key,
    )


def write_with_files(patient, author, visit, blobs, title="MRI brain"):
    record = record_create(patient=patient, author=author, kind="imaging", content={"title": title}, visit=visit)
    for index, blob in enumerate(blobs):
        access = record_get_for_user(author, record.public_id, action="upload")
        record_attach_file(access=access, upload=spooled(blob, f"part-{index}.bin"))
    ingest_all()
    record_finalize(access=record_get_for_user(author, record.public_id, action="finalize"))
    return record


def read_all(user, record):
    access = record_get_for_user(user, record.public_id)
    content = decrypt_content(access.dek, access.version)
    files = [b"".join(file_chunks(access, f)) for f in access.version.files.order_by("position")]
    return access, content, files


@pytest.fixture
def shared(keys_sealed, alice, carol, dave, visit):  # noqa: F811
    """Three records of Alice's (one with two files), stored, anchored, shared with Dave."""
    blobs = [os.urandom(300_000), b"small report " * 100]
    scan = write_with_files(alice, carol, visit, blobs)
    plain = [write(alice, carol, visit, title=f"Rx {i}") for i in range(2)]
    ingest_all()
    chain_seal()
    grant = issue(alice, grantee_user=dave)
    records = [scan, *plain]
    for record in records:
        record.refresh_from_db()
        assert record.current_version.storage == "stored"
    before = {r.pk: read_all(alice, r) for r in records}
    dave_keys = {}
    for record in records:
        access = record_get_for_user(dave, record.public_id)
        assert access.basis == "grant"
        dave_keys[record.pk] = open_dek(access.version, access.wrapped)  # what Dave's node keeps
    return {"grant": grant, "records": records, "scan": scan, "blobs": blobs, "before": before, "dave": dave_keys}


def test_revocation_rekeys_every_record_and_the_old_key_opens_nothing_new(shared, alice, carol, dave):
    grant, records = shared["grant"], shared["records"]
    old_versions = {r.pk: r.current_version for r in records}
    old_statuses = {r.pk: r.status for r in records}
    old_roots = [v.root_cid for v in old_versions.values()]
    old_roots += list(RecordFile.objects.filter(version__in=old_versions.values()).values_list("root_cid", flat=True))
    store = dag_writer()
    assert all(store.pin_count(CID.decode(root)) for root in old_roots)

    grant_revoke(patient=alice, grant=grant)
    job = RekeyJob.objects.get(grant=grant)
    assert (job.status, job.total, job.done_count) == ("pending", 3, 0)
    assert rekey.rekey_job_run(job.pk) == "done"
    job.refresh_from_db()
    assert (job.status, job.done_count) == ("done", 3)

    for record in records:
        record.refresh_from_db()
        new = record.current_version
        old = old_versions[record.pk]
        # New keys, same content and author: not an amendment by the patient.
        assert new.number == old.number + 1 and new.origin == "rekey" and new.created_by == old.created_by
        assert record.status == old_statuses[record.pk]
        # Sealed to the current recipients only: never to Dave.
        assert not WrappedKey.objects.filter(version=new, user=dave).exists()
        assert set(WrappedKey.objects.filter(version=new).values_list("user_id", flat=True)) >= {alice.pk, carol.pk}
        # Dave's old envelopes are gone from the history rows too.
        assert not WrappedKey.objects.filter(version__record=record, user=dave).exists()
        # The key Dave's node held opens nothing written after the revocation.
        old_dek = shared["dave"][record.pk]
        with pytest.raises(CryptoError):
            decrypt_content(old_dek, new)
        for new_file, old_file in zip(new.files.order_by("position"), old.files.order_by("position"), strict=True):
            assert new_file.stream_id != old_file.stream_id and new_file.root_cid != old_file.root_cid
            with pytest.raises(CryptoError):
                unwrap_file_key(old_dek, new_file)
            old_file_key = unwrap_file_key(old_dek, old_file)
            with pytest.raises(CryptoError):
                b"".join(
                    stream.decrypt_range(
                        old_file_key,
                        SequentialReader(CID.decode(new_file.root_cid)),
                        associated_data=new_file.stream_associated_data(),
                        ciphertext_total=new_file.ciphertext_size,
                    )
                )
        # Patient and author still read everything, byte for byte.
        _access, content_before, files_before = shared["before"][record.pk]
        for reader in (alice, carol):
            access, content, files = read_all(reader, record)
            assert access.version.pk == new.pk
            assert content == content_before | {"files": content["files"]}
            assert files == files_before
    assert read_all(alice, shared["scan"])[2] == shared["blobs"]
    # Dave is denied, and has no key left anywhere.
    assert not WrappedKey.objects.filter(user=dave).exists()

    # Old ciphertext unpinned; new roots stored once the revocation they name is sealed, then anchored.
    assert all(store.pin_count(CID.decode(root)) == 0 for root in old_roots)
    assert {r.current_version.storage for r in records} == {"pending"}
    chain_seal()  # the grant's issue; then its revocation, which waited for it
    assert grants_redrive() == 1
    assert storage.version_store(records[0].current_version_id) == "waiting-previous"
    chain_seal()
    for record in records:
        assert storage.version_store(record.current_version_id) == "stored"
    chain_seal()
    for record in records:
        record.refresh_from_db()
        new = record.current_version
        assert new.storage == "stored" and new.root_cid and new.root_cid not in old_roots
        anchor = TxRow.objects.get(cid=new.anchor_tx)
        assert anchor.type == "records.rekeyed"  # told apart from an amendment on chain too
        assert store.pin_count(CID.decode(new.root_cid)) == 1
        for new_file in new.files.all():
            assert store.pin_count(CID.decode(new_file.root_cid)) == 1
    # History stays.
    assert RecordVersion.objects.filter(pk__in=[v.pk for v in old_versions.values()]).count() == 3


def test_job_resumes_after_being_killed_midway_and_reruns_do_nothing(shared, alice, monkeypatch):
    grant, records = shared["grant"], shared["records"]
    versions_before = RecordVersion.objects.count()
    grant_revoke(patient=alice, grant=grant)
    job = RekeyJob.objects.get(grant=grant)

    processed = []
    real = rekey.rekey_item

    def counting(item_id):
        outcome = real(item_id)
        if outcome == "done":
            processed.append(item_id)
        return outcome

    class Killed(Exception):
        pass

    def kill(item_id):
        raise Killed(item_id)

    monkeypatch.setattr(rekey, "rekey_item", counting)
    monkeypatch.setattr(rekey, "_after_item", kill)
    with pytest.raises(Killed):
        rekey.rekey_job_run(job.pk)
    job.refresh_from_db()
    assert job.status == "running" and job.done_count == 1
    assert RekeyItem.objects.filter(job=job, status="done").count() == 1

    monkeypatch.setattr(rekey, "_after_item", lambda item_id: None)
    assert rekey.rekey_job_run(job.pk) == "done"
    job.refresh_from_db()
    assert (job.status, job.done_count, job.total) == ("done", 3, 3)
    assert sorted(processed) == sorted(RekeyItem.objects.filter(job=job).values_list("pk", flat=True))
    assert len(processed) == len(set(processed)) == 3
    assert RecordVersion.objects.count() == versions_before + 3
    for record in records:
        assert record.versions.filter(number=2).count() == 1

    # Idempotent: a rerun (duplicate message, redrive) changes nothing.
    assert rekey.rekey_job_run(job.pk) == "done"
    for item in RekeyItem.objects.filter(job=job):
        assert rekey.rekey_item(item.pk) == "skipped"
    assert RecordVersion.objects.count() == versions_before + 3
    assert len(processed) == 3


def test_a_killed_item_rolls_back_and_drops_its_new_pins(shared, alice, monkeypatch):
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    scan_item = RekeyItem.objects.get(job=job, record=shared["scan"])
    store = dag_writer()
    pins_before = dict(store.pins())

    def boom(*args, **kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr("records.sharing.rekey.seal_for", boom)
    with pytest.raises(RuntimeError):
        rekey.rekey_item(scan_item.pk)
    scan_item.refresh_from_db()
    assert scan_item.status == "pending" and scan_item.new_version is None
    assert dict(store.pins()) == pins_before  # the re-encrypted files' pins were dropped
    assert shared["scan"].versions.count() == 1
    monkeypatch.undo()
    assert rekey.rekey_job_run(job.pk) == "done"


def test_a_file_that_disagrees_with_its_row_fails_the_job_naming_it(shared, alice):
    scan_file = shared["scan"].current_version.files.order_by("position").first()
    RecordFile.objects.filter(pk=scan_file.pk).update(size=scan_file.size + 1)  # the row, not the stream
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    store = dag_writer()
    pins_before = dict(store.pins())

    assert rekey.rekey_job_run(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and str(scan_file.public_id) in job.error
    scan_item = RekeyItem.objects.get(job=job, record=shared["scan"])
    assert scan_item.status == "pending" and shared["scan"].versions.count() == 1
    # The other two records were re-keyed; the scan's half-made ciphertext was never pinned.
    assert job.done_count == 2
    new_roots = set(store.pins()) - set(pins_before)
    rekeyed = RecordVersion.objects.filter(record__in=shared["records"][1:], origin="rekey")
    assert new_roots <= {CID.decode(v.root_cid) for v in rekeyed if v.root_cid}


def test_rekey_waits_for_a_version_still_being_stored(shared, alice, carol):
    from records.clinical.services import record_amend

    scan = shared["scan"]
    access = record_get_for_user(carol, scan.public_id, action="amend")
    record_amend(access=access, content={"title": "MRI brain (corrected)"}, reason="typo")  # pending storage
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    assert rekey.rekey_job_run(job.pk) == "waiting"
    job.refresh_from_db()
    assert job.status == "running" and job.done_count == 2
    ingest_all()
    chain_seal()
    ingest_all()
    assert rekey.rekey_job_run(job.pk) == "done"
    scan.refresh_from_db()
    assert scan.current_version.number == 3
    assert read_all(alice, scan)[2] == shared["blobs"]


def test_redrive_requeues_stale_jobs(shared, alice, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from records import tasks

    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    queued = []
    monkeypatch.setattr(tasks.rekey, "delay", lambda job_id: queued.append(job_id))
    monkeypatch.setattr(tasks.ingest_file, "delay", lambda *a: None)
    monkeypatch.setattr(tasks.store_version, "delay", lambda *a: None)
    assert tasks.redrive()["rekey_jobs"] == 0
    RekeyJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timedelta(minutes=10))
    assert tasks.redrive()["rekey_jobs"] == 1 and queued == [job.pk]


def test_revocation_queues_the_job_on_commit(shared, alice, django_capture_on_commit_callbacks, monkeypatch):
    from records import tasks

    queued = []
    monkeypatch.setattr(tasks.rekey, "delay", lambda job_id: queued.append(job_id))
    with django_capture_on_commit_callbacks(execute=True):
        grant_revoke(patient=alice, grant=shared["grant"])
    assert queued == [RekeyJob.objects.get(grant=shared["grant"]).pk]


def test_sharing_page_shows_progress_and_the_honest_note(client, shared, alice):
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    RekeyJob.objects.filter(pk=job.pk).update(status="running", done_count=1)
    login(client, alice)
    body = client.get(reverse("patient_sharing"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "1 of 3 records re-encrypted" in body
    assert 'aria-valuenow="1"' in body and 'http-equiv="refresh"' in body
    assert "cannot be recalled" in body
    rekey.rekey_job_run(job.pk)
    body = client.get(reverse("patient_sharing"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "all 3 records now use new keys" in body and 'http-equiv="refresh"' not in body
    assert MedicalRecord.objects.filter(patient=alice).count() == 3


def _rekey_all(alice, grant):
    grant_revoke(patient=alice, grant=grant)
    assert rekey.rekey_job_run(RekeyJob.objects.get(grant=grant).pk) == "done"


def test_a_rekeyed_version_reads_as_new_keys_not_as_an_amendment(client, shared, alice, carol):
    _rekey_all(alice, shared["grant"])
    scan = MedicalRecord.objects.get(pk=shared["scan"].pk)
    login(client, alice)
    detail = reverse("record_detail", args=[scan.public_id])
    current = client.get(detail, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "re-encrypted after access was revoked" in current and "content and author unchanged" in current
    assert "Amendment" not in current and "Amended" not in current
    old = client.get(detail + "?version=1", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "re-encrypted with new keys" in old and "nothing in it changed" in old
    assert "replaced by an amendment" not in old
    # Until it is collected the old copy still opens; then a clear answer, not a broken download.
    old_file = RecordFile.objects.filter(version__record=scan, version__number=1).first()
    old_url = reverse("record_file", args=[scan.public_id, old_file.public_id]) + "?version=1"
    assert client.get(old_url).status_code == 200
    from chain import dag_tasks

    dag_tasks.dag_gc.apply().get()
    response = client.get(old_url, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 410
    assert "re-encrypted" in response.content.decode()
    history = client.get(reverse("record_history", args=[scan.public_id]), HTTP_ACCEPT_LANGUAGE="en")
    assert "New keys" in history.content.decode() and carol.display_name in history.content.decode()


def test_old_ciphertext_is_collected_after_rekeying(shared, alice):
    from chain import dag_tasks

    old_roots = [r.current_version.root_cid for r in shared["records"]]
    old_roots += list(
        RecordFile.objects.filter(version__record__in=shared["records"]).values_list("root_cid", flat=True)
    )
    _rekey_all(alice, shared["grant"])
    removed = dag_tasks.dag_gc.apply().get()["removed"]
    assert removed > 0
    store = dag_writer()
    assert not any(store.has(CID.decode(root)) for root in old_roots)
    for record in shared["records"]:  # and the new copies read byte for byte
        assert read_all(alice, MedicalRecord.objects.get(pk=record.pk))[2] == shared["before"][record.pk][2]


def test_the_chain_accepts_a_rekey_only_after_its_revocation_and_from_its_issuer():
    from chain.core.registry import ValidationError as TxRejectedError
    from chain.core.state import DictState
    from records import ledger

    record, grant = os.urandom(16), os.urandom(16)
    root, previous = CID.of(0x55, b"new"), CID.of(0x55, b"old")
    state = DictState(
        {
            ledger.PREFIX + record.hex(): {"version": 1, "root": previous},
            ledger.grant_state_key(grant): {"issuer": b"p" * 32, "grantee_key": b"d" * 32, "revoked": False},
        }
    )
    payload = {"record": record, "version": 2, "root": root, "commitment": bytes(32), "previous": previous}
    tx = SimpleTx(payload | {"grant": grant}, signer=b"p" * 32)
    with pytest.raises(TxRejectedError, match="revoked grant"):
        ledger.REKEYED_TYPE.validate(state, tx)
    state.set(ledger.grant_state_key(grant), {**state.get(ledger.grant_state_key(grant)), "revoked": True})
    ledger.REKEYED_TYPE.validate(state, tx)
    with pytest.raises(TxRejectedError, match="only the patient who revoked"):
        ledger.REKEYED_TYPE.validate(state, SimpleTx(tx.payload, signer=b"x" * 32))


class SimpleTx:
    def __init__(self, payload, signer):
        self.payload, self.signer = payload, signer


def test_a_file_link_from_before_the_rekeying_leads_to_the_same_bytes(client, shared, alice):
    scan = shared["scan"]
    before = {f.position: f.public_id for f in scan.current_version.files.all()}
    _rekey_all(alice, shared["grant"])
    login(client, alice)
    for position, old_id in before.items():
        response = client.get(reverse("record_file", args=[scan.public_id, old_id]) + "?download=1")
        assert response.status_code == 302
        moved = client.get(response["Location"])
        assert b"".join(moved.streaming_content) == shared["blobs"][position]


# -- the operator's card -----------------------------------------------------------------------
def _stopped_job(shared, alice):
    """A revocation whose re-keying stopped on the scan: its file's row disagrees with its stream."""
    scan_file = shared["scan"].current_version.files.order_by("position").first()
    RecordFile.objects.filter(pk=scan_file.pk).update(size=scan_file.size + 1)
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    assert rekey.rekey_job_run(job.pk) == "failed"
    return job, scan_file


def test_the_operator_sees_why_a_job_stopped_and_runs_it_again(
    client, shared, alice, operator, django_capture_on_commit_callbacks, monkeypatch
):
    from records import tasks

    job, scan_file = _stopped_job(shared, alice)
    login(client, operator)
    page = client.get(reverse("ops_home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Re-keying after revocations" in page
    assert str(scan_file.public_id) in page and "2 of 3 re-keyed" in page
    assert reverse("ops_rekey_retry", args=[job.public_id]) in page
    assert alice.name not in page  # the card names no patient

    RecordFile.objects.filter(pk=scan_file.pk).update(size=scan_file.size)  # the operator repaired it
    monkeypatch.setattr(tasks.rekey, "delay", rekey.rekey_job_run)  # the store worker, at once
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("ops_rekey_retry", args=[job.public_id]), follow=True, HTTP_ACCEPT_LANGUAGE="en")
    assert response.redirect_chain[-1][0] == reverse("ops_home")
    assert "runs again: 1 of 3 records are left" in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.done_count, job.error) == ("done", 3, "")
    assert shared["scan"].versions.filter(origin="rekey").count() == 1


def test_a_job_that_did_not_stop_is_not_run_again(client, shared, alice, operator):
    grant_revoke(patient=alice, grant=shared["grant"])
    job = RekeyJob.objects.get(grant=shared["grant"])
    assert rekey.rekey_job_run(job.pk) == "done"
    login(client, operator)
    response = client.post(reverse("ops_rekey_retry", args=[job.public_id]), follow=True, HTTP_ACCEPT_LANGUAGE="en")
    assert "Only a re-keying job that stopped can be run again." in response.content.decode()
    job.refresh_from_db()
    assert job.status == "done"
    assert client.post(reverse("ops_rekey_retry", args=[uuid.uuid4()])).status_code == 404
    assert client.get(reverse("ops_rekey_retry", args=[job.public_id])).status_code == 405


@pytest.mark.parametrize("who", ["alice", "carol", "dave", "erin", "hospital_admin"])
def test_only_the_operator_runs_a_job_again(client, request, shared, alice, who):
    job, _ = _stopped_job(shared, alice)
    login(client, request.getfixturevalue(who))
    assert client.post(reverse("ops_rekey_retry", args=[job.public_id])).status_code == 403
    client.logout()
    response = client.post(reverse("ops_rekey_retry", args=[job.public_id]))
    assert response.status_code == 302 and "login" in response["Location"]
    job.refresh_from_db()
    assert job.status == "failed"


def test_the_health_report_counts_jobs_for_operators_only(client, shared, alice, operator):
    job, _ = _stopped_job(shared, alice)
    login(client, operator)
    section = client.get("/healthz").json()["sections"]["rekeying"]
    assert section["counts"] == {"pending": 0, "running": 0, "done": 0, "failed": 1}
    assert section["failed"][0]["job"] == str(job.public_id)
    client.logout()
    assert "sections" not in client.get("/healthz").json()
