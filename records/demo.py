"""Demo records for the demo patient, so a new node shows a living timeline.

All content is invented. Records are created through the same services as
the portal (``imported=True``: there is no live 2FA session during seeding),
finalised, and left for the store worker to store and anchor.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from accounts.models import User
from records.clinical.services import record_create, record_finalize_imported, visit_open
from records.models import AccessEvent, Grant, MedicalRecord, ResearchDataset, Visit
from records.research.services import dataset_create
from records.sharing.grants import grant_issue

log = logging.getLogger(__name__)

DEMO_RECORDS = [
    # (doctor email, visit kind, days ago, kind, content)
    (
        "doctor@demo.yilian",
        "outpatient",
        120,
        "note",
        {
            "title": "门诊记录：上呼吸道感染 Outpatient note: upper respiratory infection",
            "text": (
                "咳嗽、咽痛三天，无发热。查体：咽部充血。建议多饮水，对症治疗。\n"
                "Cough and sore throat for three days, no fever."
            ),
        },
    ),
    (
        "doctor@demo.yilian",
        "outpatient",
        120,
        "prescription",
        {
            "title": "处方：阿莫西林 Prescription: amoxicillin",
            "instructions": "饭后服用，疗程结束前勿自行停药。Take after meals; finish the course.",
            "medications": [
                {
                    "name": "阿莫西林胶囊 Amoxicillin",
                    "dose": "500 mg",
                    "route": "oral",
                    "frequency": "每日三次 three times daily",
                    "duration": "7 天 days",
                },
                {
                    "name": "布洛芬 Ibuprofen",
                    "dose": "200 mg",
                    "route": "oral",
                    "frequency": "必要时 as needed",
                    "duration": "3 天 days",
                },
            ],
        },
    ),
    (
        "doctor@demo.yilian",
        "outpatient",
        40,
        "lab_report",
        {
            "title": "血常规 Complete blood count",
            "specimen": "静脉血 venous blood",
            "comment": "白细胞轻度升高。Mildly raised white cell count.",
            "observations": [
                {"name": "白细胞 WBC", "value": "10.8", "unit": "10^9/L", "reference_range": "3.5–9.5", "flag": "high"},
                {
                    "name": "血红蛋白 Hemoglobin",
                    "value": "132",
                    "unit": "g/L",
                    "reference_range": "115–150",
                    "flag": "normal",
                },
                {
                    "name": "血小板 Platelets",
                    "value": "245",
                    "unit": "10^9/L",
                    "reference_range": "125–350",
                    "flag": "normal",
                },
            ],
        },
    ),
    (
        "doctor2@demo.yilian",
        "outpatient",
        20,
        "imaging",
        {
            "title": "头颅MRI平扫 MRI brain without contrast",
            "modality": "MR",
            "body_site": "头部 Head",
            "findings": "脑实质未见明显异常信号。No abnormal signal in the brain parenchyma.",
            "impression": "未见明显异常。No significant abnormality.",
        },
    ),
    (
        "doctor2@demo.yilian",
        "outpatient",
        20,
        "pathology",
        {
            "title": "皮肤活检 Skin biopsy",
            "specimen": "左前臂皮肤 Skin, left forearm",
            "diagnosis": "脂溢性角化病 Seborrheic keratosis",
            "findings": "表皮角化过度，基底细胞样细胞增生，未见异型。No atypia.",
        },
    ),
]


# The community clinic's own visit, seeded on its node in a consortium (``seed_institution_records``).
CLINIC_RECORDS = [
    (
        "doctor3@demo.yilian",
        "outpatient",
        60,
        "note",
        {
            "title": "全科门诊：高血压随访 General practice: hypertension follow-up",
            "text": (
                "血压控制可，无头晕胸闷。继续原方案，三个月后复查。\n"
                "Blood pressure controlled, no dizziness; same treatment, review in three months."
            ),
        },
    ),
    (
        "doctor3@demo.yilian",
        "outpatient",
        60,
        "prescription",
        {
            "title": "处方：氨氯地平 Prescription: amlodipine",
            "instructions": "每日早晨服用，监测血压。Take every morning; keep a blood pressure diary.",
            "medications": [
                {
                    "name": "苯磺酸氨氯地平片 Amlodipine",
                    "dose": "5 mg",
                    "route": "oral",
                    "frequency": "每日一次 once daily",
                    "duration": "90 天 days",
                }
            ],
        },
    ),
]


def seed_institution_records(institution: str) -> int:
    """``make cluster``: the demo records one institution's doctors wrote, for the first patient registered there.

    Each institution's node holds what its own staff wrote; records written at
    one hospital for a patient of another need the consortium's cross-node care.
    """
    from accounts.demo import PATIENT_HOMES

    patient = next((email for email, home in PATIENT_HOMES.items() if home == institution), None)
    if patient is None:
        return 0
    doctors = set(User.objects.filter(institution__code=institution).values_list("email", flat=True))
    entries = [entry for entry in DEMO_RECORDS + CLINIC_RECORDS if entry[0] in doctors]
    return seed_demo_records(patient, entries)


# When each step of a seeded visit happened, after the visit opened: the footprint tells it as it would have been.
_STEP_MINUTES = {AccessEvent.Action.OPEN_VISIT: 0, AccessEvent.Action.CREATE: 10, AccessEvent.Action.FINALIZE: 25}


def _backdate_events(when, **match) -> None:
    """Date the footprint events ``match`` names (a visit's, a record's) to the history they tell, not the seeding.

    Only events not yet logged on chain nor sent to the patient's home node:
    their digest is computed from the row when they are logged.
    """
    unlogged = AccessEvent.objects.filter(chain_tx="", forward__in=["", "pending"], **match)
    for action, minutes in _STEP_MINUTES.items():
        unlogged.filter(action=action).update(at=when + timedelta(minutes=minutes))


def seed_demo_records(patient_email: str = "patient@demo.yilian", entries: list | None = None) -> int:
    patient = User.objects.filter(email=patient_email).first()
    if patient is None or MedicalRecord.objects.filter(patient=patient).exists():
        return 0
    made = 0
    visits: dict[tuple[str, int], Visit] = {}
    for doctor_email, visit_kind, days_ago, kind, content in DEMO_RECORDS if entries is None else entries:
        doctor = User.objects.get(email=doctor_email)
        key = (doctor_email, days_ago)
        when = timezone.now() - timedelta(days=days_ago)
        if key not in visits:
            visit = visit_open(clinician=doctor, patient=patient, kind=visit_kind, imported=True)
            Visit.objects.filter(pk=visit.pk).update(
                opened_at=when, status="closed", closed_at=when + timedelta(hours=1)
            )
            _backdate_events(when, visit=visit, record=None)
            visits[key] = visit
        record = record_create(
            patient=patient, author=doctor, kind=kind, content=content, visit=visits[key], imported=True
        )
        MedicalRecord.objects.filter(pk=record.pk).update(created_at=when)
        record_finalize_imported(record=record)
        _backdate_events(when, record=record)
        made += 1
    return made


# -- research: consenting patients and one dataset ----------------------------------------------
RESEARCH_INSTITUTE = "dongyue"
RESEARCHER = "researcher@demo.yilian"
DEMO_DATASET_TITLE = "血常规与处方（成人） Blood counts and prescriptions in adults"
# The demo patients' demographics: (email, years old, sex).
DEMO_DEMOGRAPHICS = [
    ("patient@demo.yilian", 42, "female"),
    ("patient2@demo.yilian", 63, "male"),
    ("patient3@demo.yilian", 29, "female"),
    ("patient4@demo.yilian", 51, "male"),
]
# Fictional patients who grant the research institute research use: (email, name, name_en, years old, sex).
# Six women in their early forties and five men in their early sixties form groups of at least k = 5;
# the young woman is alone in her group, so the dataset shows one suppressed patient.
RESEARCH_PATIENTS = [
    ("cohort01@demo.yilian", "林慧敏", "Lin Huimin", 41, "female"),
    ("cohort02@demo.yilian", "黄佳琪", "Huang Jiaqi", 42, "female"),
    ("cohort03@demo.yilian", "吴晓燕", "Wu Xiaoyan", 43, "female"),
    ("cohort04@demo.yilian", "徐丽萍", "Xu Liping", 41, "female"),
    ("cohort05@demo.yilian", "朱红霞", "Zhu Hongxia", 42, "female"),
    ("cohort06@demo.yilian", "胡春燕", "Hu Chunyan", 43, "female"),
    ("cohort07@demo.yilian", "郭建华", "Guo Jianhua", 61, "male"),
    ("cohort08@demo.yilian", "何国强", "He Guoqiang", 62, "male"),
    ("cohort09@demo.yilian", "罗志刚", "Luo Zhigang", 63, "male"),
    ("cohort10@demo.yilian", "梁永明", "Liang Yongming", 61, "male"),
    ("cohort11@demo.yilian", "宋德胜", "Song Desheng", 62, "male"),
    ("cohort12@demo.yilian", "唐雨欣", "Tang Yuxin", 27, "female"),
]


def _birth_date(years: int, index: int):
    """A birth date ``years`` ago, spread over the first months so no two patients share one."""
    today = timezone.localdate()
    return today.replace(year=today.year - years, month=1 + index % 6, day=1 + index)


def _cohort_records(index: int) -> list[tuple[int, str, dict]]:
    """(days ago, kind, content) for one cohort patient: a blood count and, later, a prescription."""
    wbc = f"{5.2 + (index * 0.7) % 5:.1f}"
    hb = str(118 + (index * 7) % 40)
    return [
        (
            150 - index * 5,
            "lab_report",
            {
                "title": "血常规 Complete blood count",
                "specimen": "静脉血 venous blood",
                "comment": "",
                "observations": [
                    {
                        "name": "白细胞 WBC",
                        "value": wbc,
                        "unit": "10^9/L",
                        "reference_range": "3.5–9.5",
                        "flag": "high" if float(wbc) > 9.5 else "normal",
                    },
                    {
                        "name": "血红蛋白 Hemoglobin",
                        "value": hb,
                        "unit": "g/L",
                        "reference_range": "115–150",
                        "flag": "normal",
                    },
                ],
            },
        ),
        (
            60 - index * 3,
            "prescription",
            {
                "title": "处方 Prescription",
                "instructions": "",
                "medications": [
                    {
                        "name": "二甲双胍 Metformin" if index % 2 else "氨氯地平 Amlodipine",
                        "dose": "500 mg" if index % 2 else "5 mg",
                        "route": "oral",
                        "frequency": "每日两次 twice daily" if index % 2 else "每日一次 once daily",
                        "duration": "30 天 days",
                    }
                ],
            },
        ),
    ]


def _seed_cohort_records(patient, doctor, index: int) -> int:
    made = 0
    for days_ago, kind, content in _cohort_records(index):
        visit = visit_open(clinician=doctor, patient=patient, imported=True)
        when = timezone.now() - timedelta(days=days_ago)
        Visit.objects.filter(pk=visit.pk).update(opened_at=when)
        _backdate_events(when, visit=visit, record=None)
        record = record_create(patient=patient, author=doctor, kind=kind, content=content, visit=visit, imported=True)
        MedicalRecord.objects.filter(pk=record.pk).update(created_at=when)
        record_finalize_imported(record=record)
        _backdate_events(when, record=record)
        Visit.objects.filter(pk=visit.pk).update(status="closed", closed_at=when + timedelta(hours=1))
        made += 1
    return made


def _seal_now() -> bool:
    """Seal pending key registrations when no node is running (grants are validated against sealed state)."""
    from django.db import transaction

    from chain import chainstore
    from chain.ledger_services import chain_seal

    held = chainstore.holds_primary()
    try:
        store = chainstore.primary()
    except chainstore.StoreError:
        return False  # the store worker holds the chain: it seals within seconds; the next seed grants
    try:
        with transaction.atomic():
            chain_seal(store=store)
    except Exception:  # a chain store out of step with this database: the grants wait, the demo goes on
        log.warning("could not seal the demo's key registrations; research grants wait for the next seed")
        return False
    finally:
        if not held:
            chainstore.close_all()  # leave the store to the node that starts next
    return True


def _grant_research(patient, institute) -> bool:
    from django.db import transaction

    from chain.ledger_services import TxRejected

    try:
        with transaction.atomic():
            grant_issue(
                patient=patient,
                grantee_institution=institute,
                scope="all",
                purpose="research",
                valid_from=timezone.now() - timedelta(minutes=1),
                valid_until=timezone.now() + timedelta(days=730),
            )
    except TxRejected:
        return False
    return True


def seed_cluster_research(institution: str) -> int:
    """``make cluster``: the research institute's dataset, or one care institution's share of the cohort.

    The consenting cohort is spread over the care institutions' nodes (patient
    ``i`` at the ``i % 3``-th), each with the records its doctor wrote, so that
    the institute's k = 5 groups can form only from patients of every node
    (story 5). Their research grants need their keys on chain and the institute
    in the node's directory: :func:`grant_cluster_research` issues them once
    the consortium runs.
    """
    from accounts.demo import INSTITUTIONS

    if institution == RESEARCH_INSTITUTE:
        return _demo_dataset()
    care = [item.code for item in INSTITUTIONS if item.kind != "research"]
    doctor = (
        User.objects.filter(role="clinician", institution__code=institution, verified_at__isnull=False)
        .order_by("pk")
        .first()
    )
    if institution not in care or doctor is None:
        return 0
    made = 0
    for index in range(care.index(institution), len(RESEARCH_PATIENTS), len(care)):
        made += _cohort_patient(index, doctor)[1]
    return made


def grant_cluster_research() -> tuple[int, int]:
    """This node's cohort patients grant the research institute research use: (issued now, still waiting).

    Waiting: the institute is not in this node's directory yet, or a
    patient's key is not on chain yet; run again a few seconds later.
    """
    from accounts.models import Institution

    cohort = list(User.objects.filter(email__in=[entry[0] for entry in RESEARCH_PATIENTS], role="patient"))
    institute = Institution.objects.filter(code=RESEARCH_INSTITUTE).first()
    if institute is None:
        return 0, len(cohort)
    granted = _research_granted(institute, cohort)
    issued = waiting = 0
    for patient in cohort:
        if patient.pk in granted:
            continue
        if _grant_research(patient, institute):
            issued += 1
        else:
            waiting += 1
    return issued, waiting


def _cohort_patient(index: int, doctor) -> tuple[User, int]:
    """The ``index``-th cohort patient, with their records by ``doctor``; and how many objects were made."""
    from accounts.services import user_create

    email, name, name_en, years, sex = RESEARCH_PATIENTS[index]
    made = 0
    patient = User.objects.filter(email=email).first()
    if patient is None:
        patient = user_create(email=email, password=None, role="patient", name=name, name_en=name_en)
        User.objects.filter(pk=patient.pk).update(birth_date=_birth_date(years, index), sex=sex)
        made += 1
    if not MedicalRecord.objects.filter(patient=patient).exists():
        made += _seed_cohort_records(patient, doctor, index)
    return patient, made


def _research_granted(institute, cohort) -> set[int]:
    """The ids of the cohort patients holding an active research grant to the institute."""
    return set(
        Grant.objects.filter(
            grantee_institution=institute, purpose="research", status=Grant.Status.ACTIVE, patient__in=cohort
        ).values_list("patient_id", flat=True)
    )


def _demo_dataset() -> int:
    from accounts.models import Institution

    institute = Institution.objects.filter(code=RESEARCH_INSTITUTE).first()
    researcher = User.objects.filter(email=RESEARCHER, institution=institute).first()
    exists = ResearchDataset.objects.filter(institution=institute, title=DEMO_DATASET_TITLE).exists()
    if institute is None or researcher is None or not researcher.is_verified_staff or exists:
        return 0
    dataset_create(user=researcher, title=DEMO_DATASET_TITLE, kinds=["lab_report", "prescription"], imported=True)
    return 1


def seed_demo_research() -> int:
    """Demographics for the demo patients, a consenting cohort, its research grants and one dataset.

    Idempotent: existing patients, records, grants and the dataset are left
    as they are. Grants need the patients' keys sealed on chain: with no node
    running, this seals them first; otherwise the grants wait for the next run.
    """
    from accounts.models import Institution

    institute = Institution.objects.filter(code=RESEARCH_INSTITUTE).first()
    doctor = User.objects.filter(email="doctor@demo.yilian").first()
    if institute is None or doctor is None:
        return 0
    made = 0
    for index, (email, years, sex) in enumerate(DEMO_DEMOGRAPHICS):
        User.objects.filter(email=email, birth_date__isnull=True).update(birth_date=_birth_date(years, index), sex=sex)
    cohort = []
    for index in range(len(RESEARCH_PATIENTS)):
        patient, new = _cohort_patient(index, doctor)
        cohort.append(patient)
        made += new
    granted = _research_granted(institute, cohort)
    waiting = [p for p in cohort if p.pk not in granted]
    if waiting:
        waiting = [p for p in waiting if not _grant_research(p, institute)]
        if waiting and _seal_now():
            waiting = [p for p in waiting if not _grant_research(p, institute)]
        made += len(cohort) - len(granted) - len(waiting)
    return made + _demo_dataset()
