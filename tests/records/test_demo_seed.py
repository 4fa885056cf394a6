"""``make cluster`` seeds each node as its institution's: its staff, its patients, its own records,
and the research cohort spread over the care institutions' nodes."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from accounts import demo
from accounts.models import Institution, User
from records.demo import DEMO_DATASET_TITLE, RESEARCH_PATIENTS, grant_cluster_research
from records.models import Grant, MedicalRecord, ResearchDataset

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("node")]  # its own chain and DAG stores


def cohort_at(position: int) -> set[str]:
    """The research cohort's patients registered at the ``position``-th care institution (0, 1, 2)."""
    return {entry[0] for index, entry in enumerate(RESEARCH_PATIENTS) if index % 3 == position}


def seed(node: int) -> str:
    out = io.StringIO()
    call_command("seed_demo", cluster_node=node, stdout=out)
    return out.getvalue()


def test_a_hospital_node_holds_its_staff_its_patients_and_what_its_doctors_wrote():
    printed = seed(2)  # Mingde University Hospital

    # Its own institution only, with its keys: the others list themselves on chain from their nodes.
    assert list(Institution.objects.values_list("code", "home_node")) == [("mingde", "")]
    emails = set(User.objects.values_list("email", flat=True))
    assert emails == {
        "doctor2@demo.yilian",
        "admin.mingde@demo.yilian",
        "patient3@demo.yilian",
        "operator@demo.yilian",
    } | cohort_at(1)
    records = MedicalRecord.objects.select_related("author__institution", "patient").exclude(
        patient__email__in=cohort_at(1)
    )
    assert records.count() == 2
    assert {r.author.institution.code for r in records} == {"mingde"}
    assert {r.patient.email for r in records} == {"patient3@demo.yilian"}
    assert "Mingde University Hospital" in printed
    assert "patient3@demo.yilian" in printed and "doctor2@demo.yilian" in printed
    assert "patient@demo.yilian" not in printed


def test_the_clinic_node_has_its_own_visit_and_seeding_twice_adds_nothing():
    seed(3)
    seed(3)

    records = MedicalRecord.objects.select_related("author", "patient").exclude(patient__email__in=cohort_at(2))
    assert {(r.author.email, r.patient.email) for r in records} == {("doctor3@demo.yilian", "patient4@demo.yilian")}
    assert records.count() == 2
    assert MedicalRecord.objects.filter(patient__email__in=cohort_at(2)).count() == 2 * len(cohort_at(2))
    assert User.objects.filter(email="doctor3@demo.yilian").count() == 1


def test_a_node_beyond_the_institutions_has_only_its_operator():
    printed = seed(5)

    assert list(User.objects.values_list("email", flat=True)) == ["operator@demo.yilian"]
    assert not MedicalRecord.objects.exists()
    assert "operator@demo.yilian" in printed and "Patient portal" not in printed


def test_the_banner_names_one_login_per_portal_this_node_holds():
    every = {u.email for u in demo.USERS}
    assert demo.headline_logins(every) == [
        ("patient@demo.yilian", "Patient portal / 患者门户"),
        ("doctor@demo.yilian", "Clinic dashboard / 医生工作台"),
        ("researcher@demo.yilian", "Research portal / 科研门户"),
        ("admin@demo.yilian", "Institution admin / 机构管理"),
        ("operator@demo.yilian", "Node operator / 节点运维"),
    ]
    research_node = {u.email for u in demo.users_at("dongyue")}
    assert [email for email, _ in demo.headline_logins(research_node)] == [
        "researcher@demo.yilian",
        "admin.dongyue@demo.yilian",
        "operator@demo.yilian",
    ]


def test_the_research_cohort_is_spread_over_the_care_nodes_and_grants_once_the_institute_is_known():
    seed(1)
    assert set(User.objects.filter(email__in=cohort_at(0) | cohort_at(1)).values_list("email", flat=True)) == cohort_at(
        0
    )
    cohort = User.objects.filter(email__in=cohort_at(0))
    assert {r.author.email for r in MedicalRecord.objects.filter(patient__in=cohort)} == {"doctor@demo.yilian"}
    # The institute lists itself on chain from its own node: until it is here, the grants wait.
    assert grant_cluster_research() == (0, len(cohort_at(0)))
    from accounts.services import institution_create
    from chain.ledger_services import chain_seal

    institution_create(code="dongyue", kind="research", name="东岳医学研究院", name_en="Dongyue", city="Jinan")
    chain_seal()  # the patients' keys and the institute's, on chain
    assert grant_cluster_research() == (len(cohort_at(0)), 0)
    assert grant_cluster_research() == (0, 0)  # asked again: nothing more
    grants = Grant.objects.filter(purpose="research", grantee_institution__code="dongyue", status="active")
    assert set(grants.values_list("patient__email", flat=True)) == cohort_at(0)


def test_the_research_node_has_its_dataset_and_no_cohort():
    seed(4)
    assert ResearchDataset.objects.filter(title=DEMO_DATASET_TITLE).count() == 1
    assert not User.objects.filter(email__in=cohort_at(0) | cohort_at(1) | cohort_at(2)).exists()
    assert grant_cluster_research() == (0, 0)
    assert not Grant.objects.exists()


def test_the_seeded_history_is_in_the_footprint_when_it_happened_and_verifies_on_chain():
    from chain.ledger_services import chain_seal
    from records.footprint.services import EVENT_RELATED, access_events_log, chain_proofs
    from records.models import AccessEvent

    call_command("seed_demo", quiet_logins=True, stdout=io.StringIO())
    patient = User.objects.get(email="patient@demo.yilian")
    records = list(MedicalRecord.objects.filter(patient=patient).select_related("visit"))
    assert len({r.created_at.date() for r in records}) > 1  # a history over several days, not one seeding

    for record in records:
        steps = dict(AccessEvent.objects.filter(record=record).values_list("action", "at"))
        assert steps["create"].date() == record.created_at.date(), record.kind
        assert steps["finalize"] > steps["create"]
        opened = AccessEvent.objects.get(visit=record.visit, record=None, action="open_visit")
        assert opened.at == record.visit.opened_at <= steps["create"]

    while access_events_log()[0]:
        pass
    chain_seal()
    events = list(AccessEvent.objects.filter(patient=patient).select_related(*EVENT_RELATED))
    assert events and {p.state for p in chain_proofs(events).values()} == {"verified"}
