"""Research datasets: consented records, de-identified, exported as CSV or FHIR, every use audited.

A dataset is a researcher's definition (title, kinds of record) owned by
their institute. Its rows are built at export time from the records whose
patients granted research use to the researcher or the institute *now*:
``grants_usable_by`` keeps only active, in-window, research-purpose grants
for a researcher, so a treatment grant contributes nothing and a revoked or
expired grant drops out on the next export. Drafts and versions the store
worker has not stored and anchored yet are left out.

What leaves the node (``records.deid`` holds the pure rules and their argument):

- subjects are ``HMAC-SHA256(dataset secret, patient public id)[:16]``, a
  pseudonym per dataset (two datasets cannot be joined on it); never a name,
  e-mail, public id or birth date;
- quasi-identifiers are an age band and sex, k-anonymous with k = 5 (small
  groups generalised, then suppressed);
- no exact date: the year of the subject's first record in the dataset and
  each record's days since it;
- only analysable fields per kind, every free-text field scrubbed of the
  patient's names, IDs, phone numbers, e-mail, web addresses, dates and long
  numbers.

Keys: the same rules as ``records.policy.record_get_for_user`` (a cleared
researcher's only basis is a research grant in scope), applied in bulk: the
grants, their named records, the records and the envelopes in four queries,
whatever the number of records. An export writes one ``ResearchExport`` and
one ``AccessEvent`` per exported record (action ``export``, purpose
``research``, basis ``grant``) in the same transaction, so it shows in each
patient's footprint.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import os
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from allauth.mfa.utils import is_mfa_enabled
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import Role
from chain.core import crypto
from chain.kek import node_kek
from records.audit import audit, audit_row
from records.footprint.services import value_axis
from records.keys import decrypt_content, open_dek
from records.models import (
    AccessEvent,
    Grant,
    GrantPurpose,
    GrantScope,
    MedicalRecord,
    RecordKind,
    RecordVersion,
    ResearchDataset,
    ResearchExport,
    WrappedKey,
)
from records.policy import grant_in_scope, grants_usable_by
from records.research import deid

FHIR_BASE = "https://yilian.example/fhir/StructureDefinition/"
AGE_BAND_URL = FHIR_BASE + "age-band"
FIRST_YEAR_URL = FHIR_BASE + "first-record-year"
DAY_OFFSET_URL = FHIR_BASE + "day-offset"
SPECIMEN_URL = FHIR_BASE + "specimen"
BODY_SITE_URL = FHIR_BASE + "body-site"
CSV_COLUMNS = (
    "subject",
    "age_band",
    "sex",
    "record",
    "kind",
    "first_year",
    "day_offset",
    "item",
    "field",
    "name",
    "value",
    "unit",
    "reference_range",
    "flag",
    "dose",
    "route",
    "frequency",
    "duration",
)
TITLE_MAX = 200


# -- who ------------------------------------------------------------------------------------
def research_cleared(user) -> bool:
    """A researcher whose institute verified them, with 2FA on."""
    return bool(
        getattr(user, "is_authenticated", False)
        and user.role == Role.RESEARCHER
        and user.is_verified_staff
        and is_mfa_enabled(user)
    )


def _require_cleared(user) -> None:
    if not research_cleared(user):
        raise PermissionDenied(_("Only verified researchers with two-factor authentication can use datasets."))


def research_grants(user) -> list[Grant]:
    """The research grants ``user`` may use right now (to them or to their institute)."""
    return list(grants_usable_by(user).filter(purpose=GrantPurpose.RESEARCH))


def research_records(user, kinds, *, grants: list[Grant] | None = None) -> list[MedicalRecord]:
    """The non-draft, stored records of ``kinds`` that research grants usable by ``user`` cover.

    Oldest first. ``PermissionDenied`` unless ``user`` is a cleared researcher.
    The query filters by the grants' patients and the kinds only (one OR per
    grant would overflow SQL expression limits at a thousand grants); scope
    and sensitivity are then decided by ``grant_in_scope``, as for every read.
    """
    _require_cleared(user)
    grants = research_grants(user) if grants is None else grants
    kinds = [k for k in kinds if k in RecordKind.values]
    if not grants or not kinds:
        return []
    candidates = (
        MedicalRecord.objects.filter(
            patient_id__in={g.patient_id for g in grants},
            kind__in=kinds,
            current_version__storage=RecordVersion.Storage.STORED,
        )
        .exclude(status=MedicalRecord.Status.DRAFT)
        .select_related("patient", "current_version")
        .order_by("created_at", "pk")
    )
    covering = _covering(grants)
    return [r for r in candidates if covering(r)]


def _covering(grants: list[Grant]):
    """A predicate: the grants (of any of their patients) that cover a record; one query for named records."""
    by_patient: dict[int, list[Grant]] = defaultdict(list)
    for grant in grants:
        by_patient[grant.patient_id].append(grant)
    named_grants = [g.pk for g in grants if g.scope == GrantScope.RECORDS]
    named = set(
        Grant.records.through.objects.filter(grant_id__in=named_grants).values_list("grant_id", "medicalrecord_id")
    )

    def covering(record: MedicalRecord) -> list[Grant]:
        return [
            g
            for g in by_patient.get(record.patient_id, ())
            if grant_in_scope(g, record, named=(g.pk, record.pk) in named)
        ]

    return covering


# -- datasets -------------------------------------------------------------------------------
def _secret_owner(dataset: ResearchDataset) -> str:
    return f"dataset:{dataset.public_id}/pseudonym"


def _dataset_secret(dataset: ResearchDataset) -> bytes:
    return crypto.unwrap_private_key(node_kek(), bytes(dataset.secret_wrapped), owner=_secret_owner(dataset))


def _tag(secret: bytes, label: str, value) -> bytes:
    return hmac.new(secret, f"{label}|{value}".encode(), hashlib.sha256).digest()


def subject_id(secret: bytes, patient_public_id) -> str:
    """The subject's pseudonym in one dataset: HMAC-SHA256(dataset secret, patient public id), 16 hex."""
    return hmac.new(secret, str(patient_public_id).encode(), hashlib.sha256).hexdigest()[:16]


@transaction.atomic
def dataset_create(*, user, title: str, kinds, imported: bool = False) -> ResearchDataset:
    """A dataset of ``kinds`` for ``user``'s institute (cleared researchers only).

    ``imported``: made by an operator command (seeding) for a verified
    researcher without a live 2FA session, as ``records.clinical.services.record_create``.
    """
    if not (imported and user.role == Role.RESEARCHER and user.is_verified_staff):
        _require_cleared(user)
    title = (title or "").strip()
    if not title or len(title) > TITLE_MAX:
        raise ValidationError(_("Give the dataset a title of 1 to 200 characters."))
    kinds = sorted(set(kinds or ()))
    if not kinds or any(k not in RecordKind.values for k in kinds):
        raise ValidationError(_("Choose at least one kind of record."))
    dataset = ResearchDataset(institution_id=user.institution_id, created_by=user, title=title, kinds=kinds)
    dataset.secret_wrapped = crypto.wrap_private_key(node_kek(), os.urandom(32), owner=_secret_owner(dataset))
    dataset.save()
    return dataset


def datasets_for(user):
    """The datasets of ``user``'s institute, newest first, with their export counts."""
    from django.db.models import Count

    return (
        ResearchDataset.objects.filter(institution_id=user.institution_id)
        .select_related("created_by")
        .annotate(export_count=Count("exports"))
        .order_by("-created_at")
    )


def dataset_get_for_user(user, dataset_id, *, action: str = AccessEvent.Action.VIEW) -> ResearchDataset:
    """A dataset of the cleared researcher's own institute; anything else is 404, and audited."""
    _require_cleared(user)
    dataset = (
        ResearchDataset.objects.select_related("institution", "created_by")
        .filter(public_id=dataset_id, institution_id=user.institution_id)
        .first()
    )
    if dataset is None:
        audit(
            actor=user,
            action=action,
            outcome=AccessEvent.Outcome.DENIED,
            purpose=GrantPurpose.RESEARCH,
            detail=f"dataset {dataset_id} (not of this institute)",
        )
        raise Http404("no such dataset")
    return dataset


# -- the plan: which records, which subjects, what is released ---------------------------------
@dataclass
class Plan:
    """What an export of a dataset would contain right now, decided without decrypting anything.

    Only records the researcher holds a key for are eligible, and k-anonymity
    is computed over exactly those, so the page and the file always agree.
    """

    grants: list[Grant]
    records: list[MedicalRecord]  # every eligible record, oldest first
    keys: dict[int, WrappedKey]  # record pk -> the envelope the researcher opens
    missing_keys: list[MedicalRecord]  # covered by a grant but no envelope for the current version
    first_day: dict[int, date]  # patient pk -> day of their first eligible record
    release: deid.Release  # keyed by str(patient pk)

    def released(self, record: MedicalRecord) -> tuple[str, str] | None:
        return self.release.released.get(str(record.patient_id))

    @property
    def released_records(self) -> list[MedicalRecord]:
        return [r for r in self.records if self.released(r) is not None]

    @property
    def patient_count(self) -> int:
        return len(self.first_day)


def _day(record: MedicalRecord) -> date:
    return timezone.localtime(record.created_at).date()


def dataset_plan(user, dataset: ResearchDataset) -> Plan:
    grants = research_grants(user) if research_cleared(user) else []
    covered = research_records(user, dataset.kinds, grants=grants) if grants else []
    keys = _keys_for(user, grants, covered)
    records = [r for r in covered if r.pk in keys]
    missing = [r for r in covered if r.pk not in keys]
    first_day = deid.day_offsets((r.patient_id, _day(r)) for r in records)
    patients = {r.patient_id: r.patient for r in records}
    subjects = {
        str(pk): {"age": deid.age_on(patients[pk].birth_date, day), "sex": patients[pk].sex}
        for pk, day in first_day.items()
    }
    return Plan(
        grants=grants,
        records=records,
        keys=keys,
        missing_keys=missing,
        first_day=first_day,
        release=deid.k_anonymise(subjects),
    )


# -- the summary page -------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    title: str


@dataclass(frozen=True)
class BandChart:
    width: int
    height: int
    left: int
    plot_bottom: int
    bars: list[Bar]
    grid: list[tuple[float, int]]
    total: int


@dataclass
class Summary:
    patients: int
    records: int
    released_patients: int
    released_records: int
    suppressed_patients: int
    generalised_patients: int
    groups: list[dict] = field(default_factory=list)  # {"band", "sex", "count"}
    kinds: list[dict] = field(default_factory=list)  # {"kind", "label", "count"}
    chart: BandChart | None = None


def _band_key(band: str) -> tuple[int, int]:
    match = re.match(r"(\d+)(?:-(\d+)|\+)", band)
    if match is None:
        return (10_000, 0)
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else 200
    return (low, high)


def band_chart(counts: dict[str, int], *, width: int = 640, height: int = 200) -> BandChart:
    """Bars of released subjects per age band, as numbers an inline SVG template draws."""
    left, right, top, bottom = 34, 6, 12, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    bands = sorted(counts, key=_band_key)
    scale_max, grid = value_axis(max(counts.values(), default=0), top=top, plot_h=plot_h)
    slot = plot_w / max(len(bands), 10)  # at most a tenth of the width each: one band is not a wall
    bars = []
    for i, band in enumerate(bands):
        value = counts[band]
        bar_h = plot_h * value / scale_max
        label = _("unknown") if band == deid.UNKNOWN else band
        bars.append(
            Bar(
                x=round(left + i * slot + slot * 0.15, 2),
                y=round(top + plot_h - bar_h, 2),
                width=round(max(slot * 0.7, 1), 2),
                height=round(bar_h, 2),
                label=label,
                value=value,
                title=_("%(band)s: %(n)s subjects") % {"band": label, "n": value},
            )
        )
    return BandChart(
        width=width,
        height=height,
        left=left,
        plot_bottom=top + plot_h,
        bars=bars,
        grid=grid,
        total=sum(counts.values()),
    )


SEX_LABELS = {
    "female": gettext_lazy("Female"),
    "male": gettext_lazy("Male"),
    "other": gettext_lazy("Other"),
    deid.UNKNOWN: gettext_lazy("Unknown"),
}


def dataset_summary(user, dataset: ResearchDataset) -> Summary:
    """Counts for the dataset page, after k-anonymity; nothing is decrypted, nothing is audited."""
    _require_cleared(user)
    plan = dataset_plan(user, dataset)
    released = plan.released_records
    groups = plan.release.groups()
    by_band: dict[str, int] = defaultdict(int)
    for (band, _sex), n in groups.items():
        by_band[band] += n
    by_kind: dict[str, int] = defaultdict(int)
    for record in released:
        by_kind[record.kind] += 1
    labels = dict(RecordKind.choices)
    return Summary(
        patients=plan.patient_count,
        records=len(plan.records),
        released_patients=len(plan.release.released),
        released_records=len(released),
        suppressed_patients=len(plan.release.suppressed),
        generalised_patients=len(plan.release.generalised),
        groups=[
            {"band": band, "sex": str(SEX_LABELS.get(sex, sex)), "count": n}
            for (band, sex), n in sorted(groups.items(), key=lambda item: (_band_key(item[0][0]), item[0][1]))
        ],
        kinds=[
            {"kind": kind, "label": str(labels.get(kind, kind)), "count": by_kind[kind]}
            for kind in dataset.kinds
            if kind in labels
        ],
        chart=band_chart(dict(by_band)),
    )


# -- rows -------------------------------------------------------------------------------------
@dataclass
class Row:
    subject: str
    age_band: str
    sex: str
    record: str
    kind: str
    first_year: int  # the year of the subject's first record in the dataset (the same on all their rows)
    day_offset: int
    item: int
    field: str
    name: str = ""
    value: str = ""
    unit: str = ""
    reference_range: str = ""
    flag: str = ""
    dose: str = ""
    route: str = ""
    frequency: str = ""
    duration: str = ""

    def as_list(self) -> list:
        return [getattr(self, column) for column in CSV_COLUMNS]


# The fields of each kind that are released, and how (see records/forms.py for what each kind stores).
TEXT_FIELDS = {
    RecordKind.PATHOLOGY: ("specimen", "diagnosis"),
    RecordKind.IMAGING: ("modality", "body_site", "impression"),
    RecordKind.NOTE: ("text",),
    RecordKind.DOCUMENT: ("description",),
}


def record_rows(content: dict, *, kind: str, base: dict, names: list[str]) -> list[Row]:
    """The released rows of one record's decrypted ``content``; every string is scrubbed."""

    def clean(value) -> str:
        return deid.scrub(value if isinstance(value, str) else ("" if value is None else str(value)), names=names)

    rows = [Row(**base, item=0, field="title", value=clean(content.get("title")))]
    if kind == RecordKind.LAB_REPORT:
        for i, obs in enumerate(content.get("observations") or [], start=1):
            if not isinstance(obs, dict):
                continue
            rows.append(
                Row(
                    **base,
                    item=i,
                    field="observation",
                    name=clean(obs.get("name")),
                    value=clean(obs.get("value")),
                    unit=clean(obs.get("unit")),
                    reference_range=clean(obs.get("reference_range")),
                    flag=clean(obs.get("flag")),
                )
            )
    elif kind == RecordKind.PRESCRIPTION:
        for i, med in enumerate(content.get("medications") or [], start=1):
            if not isinstance(med, dict):
                continue
            rows.append(
                Row(
                    **base,
                    item=i,
                    field="medication",
                    name=clean(med.get("name")),
                    dose=clean(med.get("dose")),
                    route=clean(med.get("route")),
                    frequency=clean(med.get("frequency")),
                    duration=clean(med.get("duration")),
                )
            )
    else:
        for name in TEXT_FIELDS.get(kind, ()):
            if content.get(name):
                rows.append(Row(**base, item=0, field=name, value=clean(content.get(name))))
    return rows


def _keys_for(user, grants: list[Grant], records: list[MedicalRecord]) -> dict[int, WrappedKey]:
    """The envelope the researcher may open for each record's current version, by record pk.

    The rules of ``records.policy._decide`` / ``_key_for`` for a cleared
    researcher, in bulk: the research grants in scope of the record, then a
    personal envelope (if a grant names the user) before the institute's.
    """
    covering = _covering(grants)
    envelopes: dict[int, dict] = defaultdict(dict)
    recipients = Q(user_id=user.pk)
    if user.institution_id is not None:
        recipients |= Q(institution_id=user.institution_id)
    for wrapped in WrappedKey.objects.select_related("user", "institution").filter(
        recipients, version_id__in=[r.current_version_id for r in records]
    ):
        envelopes[wrapped.version_id]["user" if wrapped.user_id else "institution"] = wrapped
    keys = {}
    for record in records:
        if record.status == MedicalRecord.Status.DRAFT:
            continue
        grants_here = covering(record)
        held = envelopes.get(record.current_version_id, {})
        if any(g.grantee_user_id == user.pk for g in grants_here) and "user" in held:
            keys[record.pk] = held["user"]
        elif any(g.grantee_institution_id == user.institution_id for g in grants_here) and "institution" in held:
            keys[record.pk] = held["institution"]
    return keys


@dataclass
class Extract:
    rows: list[Row]
    subjects: dict[str, tuple[str, str]]  # subject -> (age band, sex)
    records: list[MedicalRecord]  # exported
    missing_keys: list[MedicalRecord]


def _extract(user, dataset: ResearchDataset, plan: Plan) -> Extract:
    secret = _dataset_secret(dataset)
    released = plan.released_records
    rows: list[Row] = []
    subjects: dict[str, tuple[str, str]] = {}
    exported = []
    for record in released:
        wrapped = plan.keys[record.pk]
        version = record.current_version
        content = decrypt_content(open_dek(version, wrapped), version)
        patient = record.patient
        band, sex = plan.released(record)
        subject = subject_id(secret, patient.public_id)
        subjects[subject] = (band, sex)
        day = _day(record)
        base = {
            "subject": subject,
            "age_band": band,
            "sex": sex,
            "record": _tag(secret, "record", record.public_id).hex()[:16],
            "kind": record.kind,
            "first_year": plan.first_day[record.patient_id].year,
            "day_offset": (day - plan.first_day[record.patient_id]).days,
        }
        names = [patient.name, patient.name_en, patient.email, patient.email.split("@")[0]]
        rows.extend(record_rows(content, kind=record.kind, base=base, names=names))
        exported.append(record)
    rows.sort(key=lambda r: (r.subject, r.day_offset, r.record, r.item, r.field))
    return Extract(rows=rows, subjects=subjects, records=exported, missing_keys=plan.missing_keys)


# -- formats -----------------------------------------------------------------------------------
_FORMULA = re.compile(r"^[=+\-@\t\r]")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _cell(value) -> str:
    """A spreadsheet opens ``=…`` as a formula: such text gets a leading apostrophe (numbers stay)."""
    text = "" if value is None else str(value)
    if _FORMULA.match(text) and not _NUMBER.match(text):
        return "'" + text
    return text


def to_csv(rows: list[Row]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(v) for v in row.as_list()])
    return out.getvalue().encode("utf-8-sig")  # the BOM lets spreadsheet programs read UTF-8 Chinese


def _rid(secret: bytes, *parts) -> str:
    return str(uuid.UUID(bytes=_tag(secret, "fhir", "|".join(str(p) for p in parts))[:16]))


def _ext_offset(row: Row) -> dict:
    return {"url": DAY_OFFSET_URL, "valueInteger": row.day_offset}


_FLAGS = {"high": "H", "low": "L", "abnormal": "A", "normal": "N"}
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_REPORT_CATEGORY = "http://terminology.hl7.org/CodeSystem/v2-0074"
_DICOM = "http://dicom.nema.org/resources/ontology/DCM"


def to_fhir(rows: list[Row], subjects: dict[str, tuple[str, str]], *, secret: bytes) -> bytes:
    """A FHIR R4 ``collection`` Bundle: one Patient per subject, then each record's resources.

    Patients carry gender and the age band (an extension), never a name or
    birth date. No resource has a date: each carries its day offset from the
    subject's first record (an extension) and the Patient the year of that
    first record, so intervals survive and no exact date can be rebuilt.
    Resource ids are derived from the dataset secret: they say nothing about anyone.
    """
    entries: list[dict] = []
    patient_url = {}
    first_year = {row.subject: row.first_year for row in rows}
    for subject, (band, sex) in sorted(subjects.items()):
        rid = _rid(secret, "Patient", subject)
        patient_url[subject] = f"urn:uuid:{rid}"
        entries.append(
            {
                "fullUrl": patient_url[subject],
                "resource": {
                    "resourceType": "Patient",
                    "id": subject,
                    "gender": sex,
                    "extension": [{"url": AGE_BAND_URL, "valueString": band}]
                    + ([{"url": FIRST_YEAR_URL, "valueInteger": first_year[subject]}] if subject in first_year else []),
                },
            }
        )
    by_record: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_record[row.record].append(row)
    for record, record_rows_ in by_record.items():
        entries.extend(_fhir_record(record, record_rows_, patient_url, secret))
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "entry": entries,
    }
    return json.dumps(bundle, ensure_ascii=False, indent=1).encode()


def _fhir_record(record: str, rows: list[Row], patient_url: dict[str, str], secret: bytes) -> list[dict]:
    head = rows[0]
    subject = {"reference": patient_url[head.subject]}
    title = next((r.value for r in rows if r.field == "title"), "")
    common = {"subject": subject, "extension": [_ext_offset(head)]}
    entries = []

    def entry(resource_type: str, rid: str, body: dict) -> dict:
        return {"fullUrl": f"urn:uuid:{rid}", "resource": {"resourceType": resource_type, "id": rid, **body}}

    if head.kind == RecordKind.LAB_REPORT:
        results = []
        for row in rows:
            if row.field != "observation":
                continue
            rid = _rid(secret, record, row.item)
            observation = {
                "status": "final",
                "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "laboratory"}]}],
                "code": {"text": row.name or "-"},
                **common,
            }
            if _NUMBER.match(row.value.strip()):
                quantity: dict = {"value": float(row.value.strip())}
                if row.unit:
                    quantity["unit"] = row.unit
                observation["valueQuantity"] = quantity
            elif row.value:
                observation["valueString"] = row.value + (f" {row.unit}" if row.unit else "")
            if row.reference_range:
                observation["referenceRange"] = [{"text": row.reference_range}]
            if row.flag in _FLAGS:
                observation["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": _FLAGS[row.flag]}]}]
            entries.append(entry("Observation", rid, observation))
            results.append({"reference": f"urn:uuid:{rid}"})
        report = {
            "status": "final",
            "category": [{"coding": [{"system": _REPORT_CATEGORY, "code": "LAB"}]}],
            "code": {"text": title or "-"},
            **common,
        }
        if results:
            report["result"] = results
        entries.append(entry("DiagnosticReport", _rid(secret, record, "report"), report))
    elif head.kind == RecordKind.PRESCRIPTION:
        for row in rows:
            if row.field != "medication":
                continue
            dosage = {"text": " · ".join(p for p in (row.dose, row.frequency, row.duration) if p) or "-"}
            if row.route:
                dosage["route"] = {"text": row.route}
            if row.frequency:
                dosage["timing"] = {"code": {"text": row.frequency}}
            statement = {
                "status": "unknown",
                "medicationCodeableConcept": {"text": row.name or "-"},
                **common,
                "dosage": [dosage],
            }
            entries.append(entry("MedicationStatement", _rid(secret, record, row.item), statement))
    elif head.kind in (RecordKind.PATHOLOGY, RecordKind.IMAGING):
        values = {r.field: r.value for r in rows}
        category = [{"coding": [{"system": _REPORT_CATEGORY, "code": "PAT" if head.kind == "pathology" else "RAD"}]}]
        if head.kind == RecordKind.IMAGING and values.get("modality"):
            category.append({"coding": [{"system": _DICOM, "code": values["modality"]}]})
        extensions = [_ext_offset(head)]
        if values.get("specimen"):
            extensions.append({"url": SPECIMEN_URL, "valueString": values["specimen"]})
        if values.get("body_site"):
            extensions.append({"url": BODY_SITE_URL, "valueString": values["body_site"]})
        report = {
            "status": "final",
            "category": category,
            "code": {"text": title or "-"},
            "subject": subject,
            "extension": extensions,
        }
        conclusion = values.get("diagnosis") or values.get("impression")
        if conclusion:
            report["conclusion"] = conclusion
        entries.append(entry("DiagnosticReport", _rid(secret, record, "report"), report))
    else:
        text = next((r.value for r in rows if r.field in ("text", "description")), "")
        document = {
            "status": "current",
            "type": {"text": "clinical note" if head.kind == RecordKind.NOTE else "patient document"},
            **common,
            "description": title or "-",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "data": base64.b64encode(text.encode()).decode(),
                        "title": title or "-",
                    }
                }
            ],
        }
        entries.append(entry("DocumentReference", _rid(secret, record, "document"), document))
    return entries


# -- export -----------------------------------------------------------------------------------------
@transaction.atomic
def dataset_export(*, user, dataset: ResearchDataset, fmt: str) -> tuple[ResearchExport, bytes]:
    """Build the de-identified file; one ``ResearchExport`` and one audit row per exported record.

    Everything is written in one transaction: an export without its audit
    rows cannot be committed.
    """
    _require_cleared(user)
    if dataset.institution_id != user.institution_id:
        raise PermissionDenied(_("This dataset belongs to another institute."))
    if fmt not in ResearchExport.Format.values:
        raise ValidationError(_("Choose CSV or FHIR."))
    plan = dataset_plan(user, dataset)
    extract = _extract(user, dataset, plan)
    secret = _dataset_secret(dataset)
    if fmt == ResearchExport.Format.CSV:
        data = to_csv(extract.rows)
    else:
        data = to_fhir(extract.rows, extract.subjects, secret=secret)
    export = ResearchExport.objects.create(
        dataset=dataset,
        exported_by=user,
        format=fmt,
        row_count=len(extract.rows),
        patient_count=len(extract.subjects),
        suppressed_patients=len(plan.release.suppressed),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    detail = f"dataset {dataset.public_id} ({fmt}), export {export.public_id}"
    now = timezone.now()
    allowed = [_event(user, r, AccessEvent.Outcome.ALLOWED, detail, now) for r in extract.records]
    denied = [_event(user, r, AccessEvent.Outcome.DENIED, "no key for this version", now) for r in extract.missing_keys]
    AccessEvent.objects.bulk_create(allowed + denied, batch_size=500)
    return export, data


def _event(user, record: MedicalRecord, outcome: str, detail: str, at) -> AccessEvent:
    """The row ``records.audit.audit`` would write for this record (the calling app's mark too), for a bulk insert."""
    event = audit_row(
        actor=user,
        action=AccessEvent.Action.EXPORT,
        outcome=outcome,
        patient=record.patient,
        record=record,
        purpose=GrantPurpose.RESEARCH,
        basis="grant" if outcome == AccessEvent.Outcome.ALLOWED else "",
        detail=detail,
    )
    event.visit_id, event.at = record.visit_id, at  # no query for the visit; one moment for the whole export
    return event


def dataset_exports(dataset: ResearchDataset, *, limit: int = 50) -> list[ResearchExport]:
    return list(dataset.exports.select_related("exported_by").order_by("-at")[:limit])
