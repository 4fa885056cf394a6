"""A data directory made by an earlier main migrates and keeps working.

``tests/fixtures/datadir-2f5c8e0.tar.gz`` is the embedded node's data
directory (SQLite, the DAG and chain stores, the node KEK and secret key) as
``make run`` left it at commit 2f5c8e0, before records/ was split into rooms:
the demo seed, every version stored and anchored, then a clean stop. This
code must migrate it, find no model change to migrate, verify its chain and
DAG, and show the demo patient and doctor their records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "datadir-2f5c8e0.tar.gz"

READ_EVERYTHING = """
from django.test import Client
from django.urls import reverse
from accounts.models import User
from records.models import MedicalRecord, RecordFile

patient = User.objects.get(email="patient@demo.yilian")
doctor = User.objects.get(email="doctor@demo.yilian")
client = Client(SERVER_NAME="localhost")
client.force_login(patient)
assert client.get(reverse("patient_home")).status_code == 200
signed = MedicalRecord.objects.filter(patient=patient, status=MedicalRecord.Status.FINAL)
assert signed.count() >= 3, signed.count()
for record in signed:
    page = client.get(reverse("record_detail", args=[record.public_id]))
    assert page.status_code == 200, (record.public_id, page.status_code)
for record_file in RecordFile.objects.filter(version__record__patient=patient, status=RecordFile.Status.STORED):
    download = client.get(reverse("record_file", args=[record_file.version.record.public_id, record_file.public_id]))
    assert download.status_code == 200, download.status_code
    assert b"".join(download.streaming_content)
assert client.get(reverse("patient_footprint")).status_code == 200
client.force_login(doctor)
assert client.get(reverse("clinic_home")).status_code == 200
print("read", signed.count(), "records")
"""


@pytest.fixture
def old_data_dir(tmp_path) -> Path:
    data_dir = tmp_path / "data"
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(data_dir, filter="data")
    data_dir.chmod(0o700)
    return data_dir


def _manage(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(EMR_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_data_directory_from_before_the_rooms_migrates_and_keeps_working(old_data_dir):
    for args in (
        ("migrate", "--no-input"),
        ("makemigrations", "--check", "--dry-run"),
        ("chain", "verify"),
        ("dag", "verify"),
        ("shell", "-c", READ_EVERYTHING),
    ):
        done = _manage(old_data_dir, *args)
        assert done.returncode == 0, f"{' '.join(args[:2])}:\n{done.stdout}\n{done.stderr}"
    assert "read" in done.stdout
