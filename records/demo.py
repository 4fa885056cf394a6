"""Demo records for the demo patient, so a new node shows a living timeline.

All content is invented. Records are created through the same services as
the portal (``imported=True``: there is no live 2FA session during seeding),
finalised, and left for the store worker to store and anchor.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.models import User
from records.models import MedicalRecord, Visit
from records.services import record_create, record_finalize_imported, visit_open

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


def seed_demo_records(patient_email: str = "patient@demo.yilian") -> int:
    patient = User.objects.filter(email=patient_email).first()
    if patient is None or MedicalRecord.objects.filter(patient=patient).exists():
        return 0
    made = 0
    visits: dict[tuple[str, int], Visit] = {}
    for doctor_email, visit_kind, days_ago, kind, content in DEMO_RECORDS:
        doctor = User.objects.get(email=doctor_email)
        key = (doctor_email, days_ago)
        if key not in visits:
            visit = visit_open(clinician=doctor, patient=patient, kind=visit_kind, imported=True)
            when = timezone.now() - timedelta(days=days_ago)
            Visit.objects.filter(pk=visit.pk).update(
                opened_at=when, status="closed", closed_at=when + timedelta(hours=1)
            )
            visits[key] = visit
        record = record_create(
            patient=patient, author=doctor, kind=kind, content=content, visit=visits[key], imported=True
        )
        MedicalRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
        record_finalize_imported(record=record)
        made += 1
    return made
