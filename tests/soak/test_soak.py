"""Soak: a whole node (``runnode`` on the embedded default) under minutes of concurrent use.

Several people at once, through the real HTTP interface: patients read their
timeline and footprint, upload documents, share with a doctor and revoke;
one doctor opens visits and writes and signs notes with files, another reads
what was shared. Afterwards nothing may have died or restarted, every upload
must be stored and anchored, every transaction sealed, and ``chain verify`` and
``dag verify`` must pass. This is the test that would have caught the node
stopping seven times in 35 minutes (the filesystem broker's half-written
messages). ``SOAK_SECONDS`` sets the duration (default 180).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.chain.node_process import NodeProcess, manage
from tests.soak.driver import Doctor, Patient, Reader, Tally, run_clients

pytestmark = [pytest.mark.slow, pytest.mark.soak]

PASSWORD = "yilian-demo-2026"
PATIENTS = ["patient@demo.yilian", "patient2@demo.yilian", "patient3@demo.yilian"]

ENABLE_TOTP = """
import json
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from accounts.models import User
secrets = {}
for email in ("doctor@demo.yilian", "doctor2@demo.yilian"):
    secret = generate_totp_secret()
    TOTP.activate(User.objects.get(email=email), secret)
    secrets[email] = secret
print(json.dumps(secrets))
"""

PENDING = """
import json
from datetime import datetime
from chain.models import MempoolEntry, Transaction
from records.models import AccessEvent, RecordFile, RecordVersion, RekeyJob
since = datetime.fromisoformat(%(since)r)
stored = RecordVersion.objects.filter(storage="stored")
print(json.dumps({
    "files_new": RecordFile.objects.filter(uploaded_at__gte=since, version__number=1).count(),
    "files_not_stored": RecordFile.objects.exclude(status="stored").count(),
    "versions_pending": RecordVersion.objects.filter(storage="pending").count(),
    "anchors_unsealed": stored.exclude(anchor_tx__in=Transaction.objects.values("cid")).count(),
    "mempool": MempoolEntry.objects.count(),
    "rekey_unfinished": RekeyJob.objects.exclude(status="done").count(),
    "accesses_unlogged": AccessEvent.objects.filter(chain_tx="").count(),
}))
"""


def shell(node: NodeProcess, code: str) -> dict:
    done = manage(node.env, "shell", "-c", code)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def totp_for(secret: str):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    return lambda: format_hotp_value(hotp_value(secret, next(iter(yield_hotp_counters_from_time()))))


def test_a_node_under_minutes_of_concurrent_use_stays_up_and_loses_nothing(tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    with NodeProcess(tmp_path / "node", web_workers=2) as node:
        secrets = shell(node, ENABLE_TOTP)
        since = shell(
            node, "import json; from django.utils import timezone; print(json.dumps(timezone.now().isoformat()))"
        )
        tally = Tally()
        doctor = Doctor(
            node.base_url,
            tally,
            email="doctor@demo.yilian",
            password=PASSWORD,
            totp=totp_for(secrets["doctor@demo.yilian"]),
            patients=PATIENTS,
        )
        reader = Reader(
            node.base_url,
            tally,
            email="doctor2@demo.yilian",
            password=PASSWORD,
            totp=totp_for(secrets["doctor2@demo.yilian"]),
            patients=PATIENTS,
            language="zh-hans",
        )
        patients = [
            Patient(
                node.base_url,
                tally,
                email=email,
                password=PASSWORD,
                doctor_email="doctor2@demo.yilian",
                language="zh-hans" if i % 2 else "en",
            )
            for i, email in enumerate(PATIENTS)
        ]
        clients = [doctor, reader, *patients]
        for client in clients:
            client.sign_in(client.email, client.password, getattr(client, "totp", None))
        run_clients(clients, seconds)

        # Let the node finish what it acknowledged: storing, anchoring, sealing, re-keying, logging reads.
        deadline = time.monotonic() + 240
        while True:
            pending = shell(node, PENDING % {"since": since})
            outstanding = {k: v for k, v in pending.items() if k != "files_new" and v}
            if not outstanding or time.monotonic() > deadline:
                break
            time.sleep(3)
        status = node.status()

    report = (
        f"{sum(tally.requests.values())} requests {dict(tally.requests)}, statuses {dict(tally.statuses)}, "
        f"actions {dict(tally.actions)}, pending after drain {pending}"
    )
    print(report)
    (tmp_path / "soak-report.txt").write_text(report)
    assert tally.failures == [], tally.failures[:20]
    assert outstanding == {}, report
    uploads = tally.actions["patient.upload"] + tally.actions["doctor.attached"]
    assert uploads > 0 and pending["files_new"] == uploads, report
    assert tally.actions["doctor.signed"] > 0 and tally.actions["patient.revoke"] > 0, report
    restarts = {name: p["restarts"] for name, p in status["processes"].items()}
    assert restarts == {"web": 0, "store": 0, "default": 0, "beat": 0}, (restarts, node.output()[-5000:])
    assert all(p["running"] for p in status["processes"].values()), status
    assert "exited with status" not in node.output()

    for command in (["chain", "verify"], ["dag", "verify"]):
        done = manage(node.env, *command, timeout=600)
        assert done.returncode == 0, (command, done.stdout.decode(), done.stderr.decode())
