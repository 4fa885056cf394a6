"""Care across institutions on a real four-node consortium (``make cluster``), walked in the browser.

Node 1 is Huakang hospital, home of the patient Zhang Xiaomei (``patient@``);
node 2 Mingde hospital (``doctor2@``); node 3 Qinghe clinic (``doctor3@``);
node 4 Dongyue research institute. The stories run in order on one
consortium: she is seen at Qinghe with her card and a one-time code; the note
written there reaches her timeline at Huakang; she shares with a doctor at
Mingde, who reads what Huakang and Qinghe wrote; every read appears in her
footprint at home, proved by the reading node's batch; with Huakang down the
Mingde doctor still reads; she revokes and Mingde is refused at once; a grant
and a revocation made while Mingde's node is down reach it when it returns;
a Mingde emergency doctor breaks the glass and Huakang releases a time-boxed
grant. Then no node's data directory holds the note's plaintext.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import time

import pytest

from accounts.demo import DEMO_PASSWORD
from records import demo as demo_records
from tests.api.test_fhir_import import FHIR, transaction_of
from tests.browser import test_records_flow as records_flow
from tests.cluster.harness import FullConsortium
from tests.records.conftest import SENTINEL, pdf_bytes

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.browser]

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
SIGNED = re.compile(r".*/records/[0-9a-f-]{36}/$")
NOTE = "Walk-in follow-up at Qinghe"

ENABLE_TOTP = """
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP
from accounts.models import User
user = User.objects.get(email={email!r})
Authenticator.objects.filter(user=user, type="totp").delete()
TOTP.activate(user, {secret!r})
print("ok")
"""
DIRECTORY_READY = """
from accounts.models import User
print(User.objects.exclude(home_node="").filter(role="clinician", verified_at__isnull=False).count())
"""


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    from tests.conftest import CHROMIUM, require_service

    require_service("Chromium", CHROMIUM is not None)
    c = FullConsortium(tmp_path_factory.mktemp("care") / "consortium")
    try:
        c.start()
        # Every node lists the other nodes' doctors (huakang: 2 verified, mingde: 1, qinghe: 1).
        for node, others in (("node-1", 2), ("node-2", 3), ("node-3", 3)):
            c.wait_until(
                lambda node=node, others=others: int(c.shell(node, DIRECTORY_READY).splitlines()[-1]) >= others,
                120,
                f"the directory at {node}",
            )
        for node, email in (("node-2", "doctor2@demo.yilian"), ("node-3", "doctor3@demo.yilian")):
            c.shell(node, ENABLE_TOTP.format(email=email, secret=SECRET))
        yield c
    finally:
        c.stop()


def sign_in(page, base: str, email: str, *, totp: bool = False) -> None:
    records_flow.sign_in(page, base, email, SECRET if totp else None)
    page.wait_for_load_state("networkidle")


def poll(page, url: str, found, *, timeout: float) -> float | None:
    """Reload ``url`` until ``found(page)``; seconds it took, None if it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        page.goto(url)
        if found(page):
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def poll_status(page, url: str, status: int, *, timeout: float) -> float | None:
    """Request ``url`` until it answers ``status``; seconds it took, None if it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if page.goto(url).status == status:
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def mingde_entries(page, badge: str):
    """The footprint entries of Mingde hospital's people showing ``badge`` (``.badge-ok``: verified on chain)."""
    return page.locator("li.fp-entry").filter(has_text="明德大学附属医院").locator(badge)


@pytest.fixture(scope="module")
def pages(consortium, browser):
    """The patient at home (node 1, Chinese) and the two doctors at their nodes, each signed in."""
    contexts = []

    def page(locale: str):
        context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        return context.new_page()

    patient, qinghe, mingde = page("zh-CN"), page("en-US"), page("en-US")
    sign_in(patient, consortium.url("node-1"), "patient@demo.yilian")
    sign_in(qinghe, consortium.url("node-3"), "doctor3@demo.yilian", totp=True)
    sign_in(mingde, consortium.url("node-2"), "doctor2@demo.yilian", totp=True)
    yield {"patient": patient, "qinghe": qinghe, "mingde": mingde}
    for context in contexts:
        context.close()


def test_1_2_seen_at_another_hospital_with_a_one_time_code_and_the_note_reaches_home(consortium, pages, artifacts_dir):
    home, clinic = consortium.url("node-1"), consortium.url("node-3")
    patient, doctor = pages["patient"], pages["qinghe"]
    patient.goto(f"{home}/patient/card/")
    yilian_id = patient.locator(".health-id-value code").inner_text().strip()
    patient.click("#one-time-code button[type=submit]")
    code = patient.locator("[data-card-code]").inner_text().strip()
    patient.screenshot(path=artifacts_dir / "cluster-card-code-zh.png", full_page=True)

    doctor.goto(f"{clinic}/clinic/patients/")
    doctor.fill("input[name=patient]", yilian_id)
    doctor.click("text=Open visit")
    doctor.wait_for_selector("text=ask them for the one-time code")  # not registered here: the code is needed
    doctor.fill("input[name=card_code]", "ZZZZ-ZZZZ")
    doctor.click("text=Open visit")
    doctor.wait_for_selector("text=wrong, used or expired")
    doctor.fill("input[name=card_code]", code)
    doctor.click("text=Open visit")
    doctor.wait_for_url("**/clinic/visits/**", timeout=30_000)
    doctor.screenshot(path=artifacts_dir / "cluster-visit-opened.png", full_page=True)

    doctor.click("a.btn:has-text('Clinical note')")
    doctor.fill("input[name=title]", NOTE)
    doctor.fill("textarea[name=text]", f"Blood pressure 128/82. {SENTINEL}")
    doctor.click("text=Save draft")
    doctor.wait_for_url("**/edit/")
    doctor.click("[data-finalize-button]")
    doctor.wait_for_url(SIGNED)
    took = poll(patient, f"{home}/patient/", lambda p: p.locator(f"text={NOTE}").count() == 1, timeout=60)
    assert took is not None and took < 10, took  # signed at node 3, on her timeline at node 1
    patient.screenshot(path=artifacts_dir / "cluster-timeline-zh.png", full_page=True)
    patient.click(f"text={NOTE}")
    patient.wait_for_selector("text=128/82")  # she opens it with her own key, at home

    patient.goto(f"{home}/patient/card/")
    assert patient.locator("#card-releases").get_by_text("青禾社区诊所").count() == 1  # the consent, recorded
    assert patient.locator("[data-card-code]").count() == 0


def test_3_4_shared_with_a_doctor_at_a_third_node_who_reads_and_is_seen_in_the_footprint(
    consortium, pages, artifacts_dir
):
    home, hospital = consortium.url("node-1"), consortium.url("node-2")
    patient, doctor = pages["patient"], pages["mingde"]
    patient.goto(f"{home}/patient/sharing/new/")
    patient.check("input[name=grantee_kind][value=user]")
    patient.fill("input[name=grantee_query]", "赵婧")
    patient.click("button[name=find]")
    patient.wait_for_selector("input[name=grantee_choice]")
    assert "明德大学附属医院" in patient.locator("form.grant-form").inner_text()  # found in the consortium directory
    patient.locator("input[name=grantee_choice]").first.check()
    patient.check("input[name=scope][value=all]")
    patient.select_option("select[name=purpose]", "second_opinion")
    patient.click("form.grant-form .actions button[type=submit]")
    patient.wait_for_url(f"{home}/patient/sharing/")

    shown = poll(
        doctor,
        f"{hospital}/clinic/patients/",
        lambda p: p.locator("#shared-with-me").get_by_text("Zhang Xiaomei").count() == 1,
        timeout=60,
    )
    assert shown is not None, "the grant never reached node 2"
    doctor.locator("#shared-with-me a").first.click()
    doctor.wait_for_load_state("networkidle")
    links = doctor.locator("a[href^='/records/']")
    hrefs = sorted({links.nth(i).get_attribute("href") for i in range(links.count())})
    assert len(hrefs) == 4  # three from Huakang, one from Qinghe
    for href in hrefs:
        assert doctor.goto(f"{hospital}{href}").status == 200
    doctor.goto(f"{hospital}/clinic/patients/")
    doctor.locator("#shared-with-me a").first.click()
    doctor.click(f"text={NOTE}")
    doctor.wait_for_selector("text=128/82")  # written at node 3, read at node 2 with a key sealed to this doctor
    doctor.screenshot(path=artifacts_dir / "cluster-mingde-reads-qinghe-note.png", full_page=True)
    pages["hrefs"] = hrefs

    seen = poll(
        patient,
        f"{home}/patient/footprint/?institution=mingde",
        lambda p: mingde_entries(p, ".badge-ok").count() >= len(hrefs),  # each proved by node 2's batch
        timeout=120,
    )
    patient.screenshot(path=artifacts_dir / "cluster-footprint-zh.png", full_page=True)
    assert seen is not None, "the reads at node 2 never reached the footprint at node 1"


def test_7_with_the_home_node_down_the_granted_doctor_still_reads(consortium, pages):
    hospital = consortium.url("node-2")
    consortium.pause("node-1")
    try:
        for href in pages["hrefs"]:
            assert pages["mingde"].goto(f"{hospital}{href}").status == 200
    finally:
        consortium.resume("node-1")


def test_3_revoked_at_home_the_other_node_refuses_the_very_next_request(consortium, pages, artifacts_dir):
    home, hospital = consortium.url("node-1"), consortium.url("node-2")
    patient, doctor = pages["patient"], pages["mingde"]
    patient.goto(f"{home}/patient/sharing/")
    patient.locator("#grants-active .grant-revoke summary").click()
    patient.locator("#grants-active .grant-revoke form button[type=submit]").first.click()
    patient.wait_for_url(f"{home}/patient/sharing/")
    assert doctor.goto(f"{hospital}{pages['hrefs'][0]}").status == 403
    doctor.screenshot(path=artifacts_dir / "cluster-mingde-refused.png", full_page=True)
    denied = poll(
        patient,
        f"{home}/patient/footprint/?institution=mingde&outcome=denied",
        lambda p: mingde_entries(p, ".badge-bad").count() >= 1 and mingde_entries(p, ".badge-ok").count() >= 1,
        timeout=120,
    )
    assert denied is not None, "the refused attempt never reached the footprint"


def test_a_node_down_during_a_grant_and_a_revocation_is_consistent_once_it_returns(consortium, pages):
    home, hospital = consortium.url("node-1"), consortium.url("node-2")
    patient, doctor = pages["patient"], pages["mingde"]
    consortium.pause("node-2")
    try:
        patient.goto(f"{home}/patient/sharing/new/")
        patient.check("input[name=grantee_kind][value=user]")
        patient.fill("input[name=grantee_query]", "赵婧")
        patient.click("button[name=find]")
        patient.locator("input[name=grantee_choice]").first.check()
        patient.check("input[name=scope][value=kinds]")
        patient.check("input[name=kinds][value=lab_report]")
        patient.click("form.grant-form .actions button[type=submit]")
        patient.wait_for_url(f"{home}/patient/sharing/")  # the patient is not held up by a node that is down
    finally:
        consortium.resume("node-2")
    lab = poll(
        doctor, f"{hospital}/clinic/patients/", lambda p: p.locator("#shared-with-me a").count() == 1, timeout=90
    )
    assert lab is not None, "the grant made while node 2 was down never reached it"

    consortium.pause("node-2")
    try:
        patient.goto(f"{home}/patient/sharing/")
        patient.locator("#grants-active .grant-revoke summary").click()
        patient.locator("#grants-active .grant-revoke form button[type=submit]").first.click()
        patient.wait_for_url(f"{home}/patient/sharing/")
    finally:
        consortium.resume("node-2")
    gone = poll(
        doctor, f"{hospital}/clinic/patients/", lambda p: p.locator("#shared-with-me a").count() == 0, timeout=90
    )
    assert gone is not None, "the revocation made while node 2 was down never reached it"
    assert doctor.goto(f"{hospital}{pages['hrefs'][0]}").status == 403


def test_6_break_glass_at_another_node_gets_a_time_boxed_release_from_the_home_node(consortium, pages, artifacts_dir):
    home, hospital = consortium.url("node-1"), consortium.url("node-2")
    patient, doctor = pages["patient"], pages["mingde"]
    patient.goto(f"{home}/patient/card/")
    yilian_id = patient.locator(".health-id-value code").inner_text().strip()
    doctor.goto(f"{hospital}/clinic/break-glass/")
    doctor.fill("input[name=patient]", yilian_id)
    doctor.check("input[name=reason][value=unconscious]")
    doctor.fill("textarea[name=detail]", "Brought in unconscious after a fall; no relatives present.")
    doctor.fill("input[name=hours]", "1")
    doctor.fill("input[name=credential]", DEMO_PASSWORD)
    doctor.click("button:has-text('Break the glass')")
    doctor.wait_for_url("**/clinic/patients/**", timeout=60_000)
    chart = doctor.url
    opened = poll(doctor, chart, lambda p: p.locator("a[href^='/records/']").count() >= 4, timeout=60)
    doctor.screenshot(path=artifacts_dir / "cluster-break-glass-chart.png", full_page=True)
    assert opened is not None, "the home node's emergency release never reached node 2"
    href = doctor.locator("a[href^='/records/']").first.get_attribute("href")
    readable = poll_status(doctor, f"{hospital}{href}", 200, timeout=60)
    assert readable is not None, "the emergency keys never reached node 2"
    assert doctor.goto(f"{hospital}{href}").status == 200
    patient.goto(f"{home}/patient/sharing/")
    patient.screenshot(path=artifacts_dir / "cluster-break-glass-patient-sharing-zh.png", full_page=True)
    assert patient.locator("#grants-active .grant").count() >= 1  # she sees the emergency grant, and may end it


RESEARCH_PLAN = """
from accounts.models import User
from records.demo import DEMO_DATASET_TITLE
from records.models import ResearchDataset
from records.research.services import dataset_plan
researcher = User.objects.get(email="researcher@demo.yilian")
plan = dataset_plan(researcher, ResearchDataset.objects.get(title=DEMO_DATASET_TITLE))
homes = sorted({r.patient.home_node for r in plan.records})
print(len(plan.records), len(plan.release.released), ",".join(homes))
"""


def test_5_a_research_institute_builds_a_de_identified_dataset_from_patients_of_every_node(consortium):
    # `make cluster` seeds the consenting cohort at the care institutions' nodes, a third at each, and
    # `cluster run` has them grant the institute research use once their keys and the institute are known.
    cohort = len(demo_records.RESEARCH_PATIENTS)
    consortium.shell("node-4", ENABLE_TOTP.format(email="researcher@demo.yilian", secret=SECRET))  # as at sign-in

    def planned():
        records, released, *homes = consortium.shell("node-4", RESEARCH_PLAN).splitlines()[-1].split(" ")
        return int(records) == 2 * cohort and int(released) >= 5 and homes == ["node-1,node-2,node-3"]

    consortium.wait_until(planned, 240, "a k = 5 dataset at node 4 from the patients of nodes 1, 2 and 3")


def test_no_node_keeps_the_notes_plaintext(consortium):
    needle = SENTINEL.encode()
    found = []
    for path in consortium.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(consortium.root)))
            except OSError:
                continue
    assert not found, found


REPLICAS_WHOLE = """
from chain import stores
from chain.core.cid import CID
from chain.models import Replica
from chain.replication import PINNED, local_state
rows = Replica.objects.exclude(state__in=["released", "releasing"])
try:
    store = stores.dag_reader()
except stores.StoreError:
    store = None  # not there (yet): nothing is whole
whole = sum(local_state(store, CID.decode(r.cid)) == PINNED for r in rows)
print(rows.count(), whole)
"""


WHOLE_CIDS = """
from chain import stores
from chain.core.cid import CID
from chain.models import Replica
from chain.replication import PINNED, local_state
try:
    store = stores.dag_reader()
except stores.StoreError:
    store = None
rows = Replica.objects.exclude(state__in=["released", "releasing"])
print(" ".join(r.cid for r in rows if store is not None and local_state(store, CID.decode(r.cid)) == PINNED))
"""


def _whole_cids(consortium, node: str) -> set[str]:
    lines = consortium.shell(node, WHOLE_CIDS).splitlines()
    return set(lines[-1].split()) if lines else set()


def test_7_the_home_nodes_wiped_store_is_repaired_from_the_replicas(consortium, pages, artifacts_dir):
    """Node 1's DAG store is lost with the node; restarted, it fetches back what it held from the others."""
    home = consortium.url("node-1")

    def copied_elsewhere() -> bool:  # what the earlier stories wrote at node 1 has reached another node
        others = set().union(*(_whole_cids(consortium, f"node-{i}") for i in (2, 3, 4)))
        return _whole_cids(consortium, "node-1") <= others

    consortium.wait_until(copied_elsewhere, 120, "every object node 1 holds whole at another node too")
    held, whole = map(int, consortium.shell("node-1", REPLICAS_WHOLE).splitlines()[-1].split())
    assert held > 0
    assert whole == held
    node = consortium.root / "node-1"
    consortium.pause("node-1")  # nothing of node 1 runs while its store goes
    # Its whole tree: an orphaned gunicorn worker would hold the node's port until it next wakes.
    pids = consortium.tree("node-1")
    (node / "dag").rename(node / "dag-lost")
    for pid in pids:  # the consortium's supervisor starts node 1 again
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(node / "dag-lost")

    def repaired() -> bool:  # every object node 1 held is whole and pinned in its new store
        rows, whole = map(int, consortium.shell("node-1", REPLICAS_WHOLE).splitlines()[-1].split())
        return rows >= held and whole == rows

    consortium.wait_until(repaired, 300, "node 1's replicas fetched back from the other nodes")
    verified = consortium.manage("node-1", "dag", "verify")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    patient = pages["patient"]
    patient.goto(f"{home}/patient/")
    patient.click(f"text={NOTE}")
    patient.wait_for_selector("text=128/82")  # written at node 3, its ciphertext back at home, opened with her key
    patient.screenshot(path=artifacts_dir / "cluster-repaired-note-zh.png", full_page=True)


FILED_NOTE = "Chest X-ray report from Huakang"
FILED = """
from accounts.models import User
from records.clinical import services
from records.clinical.uploads import spool_bytes
from records.policy import record_get_for_user
doctor = User.objects.get(email="doctor@demo.yilian")
patient = User.objects.get(email="patient@demo.yilian")
visit = services.visit_open(clinician=doctor, patient=patient)
record = services.record_create(patient=patient, author=doctor, kind="note", visit=visit,
                                content={{"title": {title!r}, "text": "No consolidation; see the scanned report."}})
access = record_get_for_user(doctor, record.public_id, action="upload")
services.record_attach_file(access=access, upload=spool_bytes("chest-xray.pdf", {data!r}))
services.record_finalize(access=record_get_for_user(doctor, record.public_id, action="finalize"))
services.visit_close(clinician=doctor, visit=visit)
print(record.public_id)
"""
COUNTS = """
from accounts.models import User
from records.models import MedicalRecord, RecordFile, Visit
here = User.objects.get(email="doctor3@demo.yilian").institution  # what an import at Qinghe would write
print(MedicalRecord.objects.filter(institution=here).count(), Visit.objects.filter(institution=here).count(),
      RecordFile.objects.filter(version__record__institution=here).count())
"""
RECORD_TYPES = {"MedicationRequest", "DiagnosticReport", "Observation", "ImagingStudy", "DocumentReference"}


def download(page, url: str) -> bytes:
    """A file's decrypted bytes, once stored (409 while it is being stored)."""
    start = time.monotonic()
    while True:
        answer = page.request.get(url)
        if answer.status != 409 or time.monotonic() - start > 60:
            assert answer.ok, (url, answer.status, answer.text()[:500])
            return answer.body()
        time.sleep(0.5)


def clinical_content(page, base: str, record_ids) -> dict[str, list[str]]:
    """Each record's content by kind, read through the API; files by name, size and sha256 (new files, new ids)."""
    out: dict[str, list[str]] = {}
    for record_id in record_ids:
        answer = page.request.get(f"{base}/api/v1/records/{record_id}/")
        assert answer.ok, (record_id, answer.status, answer.text()[:500])
        body = answer.json()
        content = {k: v for k, v in body["content"].items() if k != "files"}
        files = sorted(
            (f["name"], f["size"], hashlib.sha256(download(page, base + f["url"])).hexdigest()) for f in body["files"]
        )
        entry = json.dumps({"content": content, "files": files}, sort_keys=True, ensure_ascii=False)
        out.setdefault(body["kind"], []).append(entry)
    return {kind: sorted(entries) for kind, entries in out.items()}


def fhir_post(page, base: str, bundle: dict):
    token = next(c["value"] for c in page.context.cookies(base) if c["name"] == "csrftoken")
    headers = {"Content-Type": FHIR, "Accept": FHIR, "Accept-Language": "en", "X-CSRFToken": token}
    return page.request.post(f"{base}/fhir/r4/", data=json.dumps(bundle), headers=headers)


def test_an_export_at_home_imported_at_another_node_gives_the_same_clinical_content(consortium, pages):
    """Her $everything at Huakang (node 1), files inlined, imported by the Qinghe doctor at node 3: the same records."""
    home, clinic = consortium.url("node-1"), consortium.url("node-3")
    patient, doctor = pages["patient"], pages["qinghe"]
    consortium.shell("node-1", ENABLE_TOTP.format(email="doctor@demo.yilian", secret=SECRET))  # Huakang, 2FA
    filed = consortium.shell("node-1", FILED.format(title=FILED_NOTE, data=pdf_bytes("chest x-ray"))).splitlines()[-1]
    me = patient.request.get(f"{home}/api/v1/me/").json()
    answer = patient.request.get(f"{home}/fhir/r4/Patient/{me['id']}/$everything", headers={"Accept": FHIR})
    assert answer.ok, answer.text()[:2000]
    everything = answer.json()
    bundle = transaction_of(everything, lambda url: download(patient, home + url))
    resources = [e["resource"] for e in bundle["entry"]]
    originals = sorted({r["id"][:36] for r in resources if r["resourceType"] in RECORD_TYPES})
    assert filed in originals
    assert any("data" in c["attachment"] for r in resources for c in r.get("content") or [])
    at_home = clinical_content(patient, home, originals)
    assert {"note", "prescription", "lab_report"} <= set(at_home), sorted(at_home)  # every kind she has at node 1
    assert sum(map(len, at_home.values())) == len(originals)
    assert any(NOTE in entry for entry in at_home["note"])  # written at Qinghe in test_1_2
    assert any('"chest-xray.pdf"' in entry for entry in at_home["note"])

    counts = consortium.shell("node-3", COUNTS).splitlines()[-1]
    broken = copy.deepcopy(bundle)
    prescribed = next(e["resource"] for e in broken["entry"] if e["resource"]["resourceType"] == "MedicationRequest")
    prescribed["status"] = "sort-of"  # one entry broken: the whole Bundle is refused
    refused = fhir_post(doctor, clinic, broken)
    assert refused.status == 400, refused.text()[:2000]
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("sort-of" in (i.get("diagnostics") or "") for i in outcome["issue"]), outcome
    stranger = copy.deepcopy(bundle)
    for resource in (e["resource"] for e in stranger["entry"]):
        if resource["resourceType"] == "Patient":
            resource["identifier"] = [{"system": "urn:yilian:health-id", "value": "YL0000000"}]
            resource["id"] = "somebody-else"
    unknown = fhir_post(doctor, clinic, stranger)
    assert unknown.status == 400, unknown.text()[:2000]
    assert "not registered here" in unknown.text()
    assert consortium.shell("node-3", COUNTS).splitlines()[-1] == counts  # nothing written

    imported = fhir_post(doctor, clinic, bundle)
    assert imported.status == 200, imported.text()[:2000]
    response = imported.json()
    assert response["type"] == "transaction-response"
    made = [e["response"]["location"].split("/", 1)[1][:36] for e in response["entry"]]
    assert len(made) == len(originals)
    assert clinical_content(doctor, clinic, made) == at_home
