"""A FHIR R4 ``transaction`` Bundle from another EMR becomes encrypted, signed and anchored records here.

The importing clinician's institution writes them, in a visit per Encounter
(one visit when the Bundle has none), as if typed in the clinic: the same
services, the same forms' rules, the same audit rows. Then each is signed,
stored and anchored like any other record.

All or nothing: the whole Bundle is checked first (its shape, every resource
against ``fhir.resources``' R4B models, the codes those models leave free,
references, duplicate ids, attachment sizes and types, each record's content
against its form), and every problem is reported at once as an
``OperationOutcome`` issue naming where it is. Only a Bundle with no problem
is written, in one database transaction; a failure while writing rolls all
of it back.

What becomes what:

* ``Patient``: must be someone registered here (their Yilian ID as an
  identifier, or ``Patient/<id>`` of a patient here); accounts are never made
  by an import.
* ``Encounter`` → a visit (class AMB/EMER/IMP/VR → outpatient, emergency,
  inpatient, telehealth), closed after the import when its status is finished.
* ``MedicationRequest`` → a prescription, one per encounter and record
  (``groupIdentifier``), a medication each.
* ``DiagnosticReport`` (category LAB) with its ``result`` Observations → a lab
  report; (PAT) → a pathology result; ``ImagingStudy`` → an imaging study.
* ``DocumentReference`` → a clinical note (its text attachment), with its
  PDF, image and DICOM attachments as the record's files.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from accounts.models import Role, User
from records.clinical import services
from records.clinical.forms import FORMS_BY_KIND
from records.clinical.uploads import SNIFF_BYTES, SpooledUpload, sniff_media_type, spool_bytes
from records.fhir import mapping
from records.models import MedicalRecord, RecordKind, Visit
from records.policy import record_get_for_user

TYPES = {
    "Patient",
    "Encounter",
    "MedicationRequest",
    "DiagnosticReport",
    "Observation",
    "ImagingStudy",
    "DocumentReference",
}
# Codes fhir.resources accepts as any string: the R4 value sets, checked here.
STATUSES = {
    "Encounter": {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    "MedicationRequest": {
        "active",
        "on-hold",
        "cancelled",
        "completed",
        "entered-in-error",
        "stopped",
        "draft",
        "unknown",
    },
    "DiagnosticReport": {
        "registered",
        "partial",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "appended",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    "Observation": {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    "ImagingStudy": {"registered", "available", "cancelled", "entered-in-error", "unknown"},
    "DocumentReference": {"current", "superseded", "entered-in-error"},
}
GENDERS = {"male", "female", "other", "unknown"}
VISIT_KINDS = {
    "AMB": Visit.Kind.OUTPATIENT,
    "EMER": Visit.Kind.EMERGENCY,
    "IMP": Visit.Kind.INPATIENT,
    "VR": Visit.Kind.TELEHEALTH,
}
FLAGS = {"N": "normal", "H": "high", "HH": "high", "L": "low", "LL": "low", "A": "abnormal", "AA": "abnormal"}


def attachment_limit() -> int:
    return settings.FHIR_ATTACHMENT_MAX_BYTES


@dataclass
class Issue:
    expression: str
    text: str
    code: str = "invalid"

    def as_fhir(self) -> dict:
        return {"severity": "error", "code": self.code, "diagnostics": self.text, "expression": [self.expression]}


class ImportRefused(Exception):
    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.text for i in issues))
        self.issues = issues


@dataclass
class Planned:
    """One record to write: its kind, content, files, and the entries it came from."""

    kind: str
    content: dict
    encounter: str | None
    sources: list[int]
    files: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Plan:
    patient: User
    encounters: dict[str, dict] = field(default_factory=dict)  # key → Encounter resource
    records: list[Planned] = field(default_factory=list)


# -- checking ------------------------------------------------------------------------------------------
def check_bundle(bundle: Any) -> Plan:
    """The plan for a valid Bundle; :class:`ImportRefused` with every problem otherwise."""
    issues: list[Issue] = []
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ImportRefused([Issue("Bundle", _("The body is not a FHIR Bundle."), "structure")])
    if bundle.get("type") != "transaction":
        issues.append(Issue("Bundle.type", _("Only a transaction Bundle is imported."), "value"))
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise ImportRefused([*issues, Issue("Bundle.entry", _("The Bundle has no entries."), "required")])
    by_ref: dict[str, int] = {}
    resources: dict[int, dict] = {}
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            issues.append(Issue(f"{where}.resource", _("The entry has no resource."), "required"))
            continue
        kind = resource.get("resourceType")
        if kind not in TYPES:
            issues.append(
                Issue(
                    f"{where}.resource",
                    _("Resources of type “%(type)s” are not imported.") % {"type": kind},
                    "not-supported",
                )
            )
            continue
        request = entry.get("request")
        if not isinstance(request, dict) or request.get("method") not in ("POST", "PUT"):
            issues.append(Issue(f"{where}.request", _("A transaction entry needs a POST or PUT request."), "required"))
        issues += _model_issues(where, resource)
        issues += _code_issues(where, resource)
        for ref in _names_of(entry, resource):
            if ref in by_ref:
                issues.append(Issue(f"{where}.fullUrl", _("“%(ref)s” names two entries.") % {"ref": ref}, "duplicate"))
            by_ref[ref] = i
        resources[i] = resource
    patient, patient_issues = _patient(resources, by_ref)
    issues += patient_issues
    if issues or patient is None:
        raise ImportRefused(issues)
    plan = Plan(patient=patient)
    for i, resource in resources.items():
        if resource["resourceType"] == "Encounter":
            plan.encounters[f"Encounter/{resource.get('id') or i}"] = resource
    issues += _plan_records(plan, resources, by_ref)
    if issues:
        raise ImportRefused(issues)
    return plan


def _names_of(entry: dict, resource: dict) -> list[str]:
    names = [entry["fullUrl"]] if isinstance(entry.get("fullUrl"), str) and entry["fullUrl"] else []
    if resource.get("id"):
        names.append(f"{resource['resourceType']}/{resource['id']}")
    return names


def _model_issues(where: str, resource: dict) -> list[Issue]:
    try:
        mapping.validate(resource)
    except (ValueError, TypeError) as exc:
        errors = getattr(exc, "errors", lambda: [])()
        if errors:
            return [
                Issue(
                    f"{where}.resource.{'.'.join(str(p) for p in e.get('loc', ()))}".rstrip("."),
                    str(e.get("msg")),
                    "required" if e.get("type") == "missing" else "invalid",
                )
                for e in errors
            ]
        return [Issue(f"{where}.resource", str(exc))]
    return []


def _code_issues(where: str, resource: dict) -> list[Issue]:
    kind = resource["resourceType"]
    issues = []
    status = resource.get("status")
    if kind in STATUSES and status is not None and status not in STATUSES[kind]:
        issues.append(
            Issue(
                f"{where}.resource.status",
                _("“%(code)s” is not a %(type)s status.") % {"code": status, "type": kind},
                "code-invalid",
            )
        )
    if kind == "Patient" and resource.get("gender") not in (None, *GENDERS):
        issues.append(
            Issue(
                f"{where}.resource.gender",
                _("“%(code)s” is not an administrative gender.") % {"code": resource.get("gender")},
                "code-invalid",
            )
        )
    return issues


def _patient(resources: dict[int, dict], by_ref: dict[str, int]) -> tuple[User | None, list[Issue]]:
    people = [(i, r) for i, r in resources.items() if r["resourceType"] == "Patient"]
    if len(people) != 1:
        return None, [Issue("Bundle.entry", _("The Bundle must hold exactly one Patient."), "required")]
    i, resource = people[0]
    ids = [x.get("value", "") for x in resource.get("identifier") or [] if x.get("system") == mapping.YILIAN_ID]
    found = User.objects.filter(role=Role.PATIENT, is_active=True, health_id__in=[v for v in ids if v]).first()
    if found is None and resource.get("id"):
        found = User.objects.filter(role=Role.PATIENT, is_active=True, public_id=_uuid(resource["id"])).first()
    if found is None:
        text = _("This patient is not registered here: give their Yilian ID (identifier system %(system)s).") % {
            "system": mapping.YILIAN_ID
        }
        return None, [Issue(f"Bundle.entry[{i}].resource.identifier", text, "not-found")]
    return found, []


def _uuid(value: str):
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _plan_records(plan: Plan, resources: dict[int, dict], by_ref: dict[str, int]) -> list[Issue]:
    issues: list[Issue] = []
    used: set[int] = set()
    prescriptions: dict[tuple, Planned] = {}
    attach_to: list[tuple[int, list[tuple[str, bytes]]]] = []

    def encounter_of(resource: dict) -> str | None:
        ref = (resource.get("encounter") or (resource.get("context") or {}).get("encounter", [{}])[0] or {}).get(
            "reference"
        )
        if not ref:
            return None
        target = by_ref.get(ref)
        return f"Encounter/{resources[target].get('id') or target}" if target is not None else None

    for i, r in resources.items():
        kind = r["resourceType"]
        if kind == "MedicationRequest":
            group = (encounter_of(r), (r.get("groupIdentifier") or {}).get("value") or "")
            planned = prescriptions.get(group)
            if planned is None:
                planned = prescriptions[group] = Planned(
                    RecordKind.PRESCRIPTION,
                    {"title": _ext(r, "title") or _("Prescription"), "instructions": "", "medications": []},
                    group[0],
                    [],
                )
            dose = (r.get("dosageInstruction") or [{}])[0]
            planned.content["medications"].append(
                {
                    "name": _text(r.get("medicationCodeableConcept")) or "-",
                    "dose": _ext(r, "dose") or dose.get("text") or "-",
                    "route": _route(dose.get("route") or {}),
                    "frequency": _ext(r, "frequency") or "-",
                    "duration": _ext(r, "duration") or "-",
                }
            )
            notes = [n.get("text", "") for n in r.get("note") or []]
            if notes and not planned.content["instructions"]:
                planned.content["instructions"] = "\n".join(notes)
            planned.sources.append(i)
            used.add(i)
        elif kind == "DiagnosticReport":
            codes = {c.get("code") for cat in r.get("category") or [] for c in cat.get("coding") or []}
            title = _text(r.get("code")) or _("Report")
            if "PAT" in codes:
                content = {
                    "title": title,
                    "specimen": _ext(r, "specimen") or "-",
                    "diagnosis": r.get("conclusion") or "-",
                    "findings": _presented(r) or "-",
                }
                plan.records.append(Planned(RecordKind.PATHOLOGY, content, encounter_of(r), [i]))
            else:
                rows = []
                for ref in r.get("result") or []:
                    target = by_ref.get(ref.get("reference", ""))
                    if target is None or resources[target]["resourceType"] != "Observation":
                        issues.append(
                            Issue(
                                f"Bundle.entry[{i}].resource.result",
                                _("“%(ref)s” is not an Observation in this Bundle.") % {"ref": ref.get("reference")},
                                "not-found",
                            )
                        )
                        continue
                    rows.append(_observation(resources[target]))
                    used.add(target)
                content = {
                    "title": title,
                    "specimen": _ext(r, "specimen") or "-",
                    "comment": r.get("conclusion") or "",
                    "observations": rows,
                }
                plan.records.append(Planned(RecordKind.LAB_REPORT, content, encounter_of(r), [i]))
            used.add(i)
        elif kind == "ImagingStudy":
            modality = (r.get("modality") or [{}])[0].get("code") or "OT"
            notes = [n.get("text", "") for n in r.get("note") or []]
            content = {
                "title": r.get("description") or _("Imaging study"),
                "modality": modality,
                "body_site": _text((r.get("reasonCode") or [{}])[0]) or "-",
                "findings": _ext(r, "findings") or (notes[0] if notes else "-"),
                "impression": _ext(r, "impression") or (notes[1] if len(notes) > 1 else ""),
            }
            plan.records.append(Planned(RecordKind.IMAGING, content, encounter_of(r), [i]))
            used.add(i)
        elif kind == "DocumentReference":
            planned, problems = _document(i, r)
            issues += problems
            if planned is not None:
                planned.encounter = encounter_of(r)
                related = [by_ref.get(x.get("reference", "")) for x in (r.get("context") or {}).get("related") or []]
                owners = [j for j in related if j is not None]
                if owners and planned.files and not _has_text(r):
                    attach_to.append((owners[0], planned.files))  # another record's files: attached to it
                else:
                    plan.records.append(planned)
            used.add(i)
    plan.records[0:0] = list(prescriptions.values())
    for owner, files in attach_to:
        target = next((p for p in plan.records if owner in p.sources), None)
        if target is None:
            issues.append(Issue(f"Bundle.entry[{owner}]", _("Files belong to a resource that is not imported.")))
        else:
            target.files.extend(files)
    for i, r in resources.items():
        if r["resourceType"] == "Observation" and i not in used:
            issues.append(
                Issue(
                    f"Bundle.entry[{i}].resource",
                    _("An Observation is imported as a result of a DiagnosticReport in the same Bundle."),
                    "business-rule",
                )
            )
    for planned in plan.records:
        form = FORMS_BY_KIND[planned.kind].bound_to(planned.content)
        if not form.is_valid():
            where = f"Bundle.entry[{planned.sources[0]}].resource"
            for name, messages in form.error_map().items():
                issues += [Issue(f"{where} ({name})", str(m)) for m in messages]
        else:
            planned.content = form.content()
    return issues


def _document(i: int, r: dict) -> tuple[Planned | None, list[Issue]]:
    issues, text, files = [], "", []
    for j, content in enumerate(r.get("content") or []):
        attachment = content.get("attachment") or {}
        where = f"Bundle.entry[{i}].resource.content[{j}].attachment"
        if "data" not in attachment:
            issues.append(
                Issue(where, _("An attachment is imported from its data; a URL alone is not fetched."), "not-supported")
            )
            continue
        try:
            data = base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            issues.append(Issue(f"{where}.data", _("The attachment's data is not base64.")))
            continue
        if len(data) > attachment_limit():
            issues.append(
                Issue(
                    f"{where}.data",
                    _("The attachment is larger than the limit of %(limit)s bytes.") % {"limit": attachment_limit()},
                    "too-costly",
                )
            )
            continue
        if not (attachment.get("contentType") or "").startswith("text/plain") and not sniff_media_type(
            data[:SNIFF_BYTES]
        ):
            issues.append(
                Issue(
                    f"{where}.data",
                    _("This kind of file is not accepted: attach PDFs, images (PNG, JPEG, WebP, TIFF) or DICOM."),
                    "not-supported",
                )
            )
            continue
        if (attachment.get("contentType") or "").startswith("text/plain"):
            try:
                text += data.decode("utf-8")
            except UnicodeDecodeError:
                issues.append(Issue(f"{where}.data", _("The text attachment is not UTF-8.")))
        else:
            files.append((attachment.get("title") or "file", data))
    if issues:
        return None, issues
    title = r.get("description") or _text(r.get("type")) or _("Document")
    if not text:
        text = _("Imported with %(count)s attached file(s).") % {"count": len(files)}
    return Planned(RecordKind.NOTE, {"title": title, "text": text}, None, [i], files), []


def _has_text(r: dict) -> bool:
    return any(
        ((c.get("attachment") or {}).get("contentType") or "").startswith("text/plain") for c in r.get("content") or []
    )


def _observation(r: dict) -> dict:
    value = ""
    unit = ""
    if "valueQuantity" in r:
        number = r["valueQuantity"].get("value")
        value = f"{number:g}" if isinstance(number, float) else str(number)
        unit = r["valueQuantity"].get("unit") or ""
    elif "valueString" in r:
        value = r["valueString"]
    codes = [c.get("code") for i in r.get("interpretation") or [] for c in i.get("coding") or []]
    return {
        "name": _text(r.get("code")) or "-",
        "value": value or "-",
        "unit": unit,
        "reference_range": (r.get("referenceRange") or [{}])[0].get("text") or "",
        "flag": next((FLAGS[c] for c in codes if c in FLAGS), "normal"),
    }


def _route(concept: dict) -> str:
    known = {"oral", "iv", "im", "sc", "topical", "inhaled"}
    text = (_text(concept) or "").lower()
    return text if text in known else "other"


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    return concept.get("text") or next((c.get("display") or c.get("code") for c in concept.get("coding") or []), "")


def _ext(resource: dict, name: str) -> str:
    return next(
        (e.get("valueString", "") for e in resource.get("extension") or [] if e.get("url") == f"{mapping.EXT}/{name}"),
        "",
    )


def _presented(resource: dict) -> str:
    for form in resource.get("presentedForm") or []:
        if (form.get("contentType") or "").startswith("text/plain") and form.get("data"):
            try:
                return base64.b64decode(form["data"]).decode("utf-8")
            except (binascii.Error, ValueError):
                return ""
    return ""


# -- writing -------------------------------------------------------------------------------------------
def import_bundle(*, clinician, bundle: Any) -> list[MedicalRecord]:
    """Check, then write every record of ``bundle`` (all or nothing); the records, signed."""
    plan = check_bundle(bundle)
    spooled: list[SpooledUpload] = []
    try:
        return _write(clinician, plan, spooled)
    except BaseException:
        for upload in spooled:
            if not upload.claimed:
                upload.discard()
        raise


@transaction.atomic
def _write(clinician, plan: Plan, spooled: list[SpooledUpload]) -> list[MedicalRecord]:
    visits: dict[str | None, Visit] = {}

    def visit_for(key: str | None) -> Visit:
        if key not in visits:
            encounter = plan.encounters.get(key or "") or {}
            kind = VISIT_KINDS.get((encounter.get("class") or {}).get("code", ""), Visit.Kind.OUTPATIENT)
            visits[key] = services.visit_open(clinician=clinician, patient=plan.patient, kind=kind)
        return visits[key]

    made = []
    for planned in plan.records:
        visit = visit_for(planned.encounter)
        record = services.record_create(
            patient=plan.patient, author=clinician, kind=planned.kind, content=planned.content, visit=visit
        )
        if planned.files:
            access = record_get_for_user(clinician, record.public_id, action="upload")
            for name, data in planned.files:
                upload = spool_bytes(name, data, max_bytes=attachment_limit())
                spooled.append(upload)
                services.record_attach_file(access=access, upload=upload)
                upload.claimed = True
        access = record_get_for_user(clinician, record.public_id, action="finalize")
        services.record_finalize(access=access)
        made.append(record)
    for key, visit in visits.items():
        if (plan.encounters.get(key or "") or {}).get("status", "finished") == "finished":
            services.visit_close(clinician=clinician, visit=visit)
    if not made:
        raise ValidationError(_("The Bundle holds no record to import."))
    return made
