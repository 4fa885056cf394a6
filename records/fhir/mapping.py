"""Yilian's rows as FHIR R4 resources (JSON dicts), each checked against ``fhir.resources`` (its R4B models).

One function per kind of thing: a patient, a visit, a decrypted record
version (a prescription becomes MedicationRequests, a lab report a
DiagnosticReport with its Observations, pathology a DiagnosticReport, an
imaging study an ImagingStudy, a note or a document a DocumentReference;
files are attachments with their URL and their ciphertext's CID), a grant (a
Consent), an access event (an AuditEvent), a signed version (a Provenance
whose signature data is the anchor on the chain with its merkle proof).

Ids are the public ids (UUIDs), with a suffix where one record gives several
resources. Codes the models do not check (statuses, gender, purposes) come
from the fixed tables here, so every value is one the specification allows.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from django.urls import reverse

from records.models import AccessEvent, Grant, GrantPurpose, MedicalRecord, RecordKind, RecordVersion, Visit

YILIAN_ID = "urn:yilian:health-id"
RECORD_SYSTEM = "urn:yilian:record"
EXT = "https://yilian.example/fhir/StructureDefinition"  # our extensions: what FHIR has no element for
CID_SYSTEM = "urn:ipfs:cid"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
REPORT_CATEGORY = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
AUDIT_TYPE = "http://dicom.nema.org/resources/ontology/DCM"
SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"

GENDERS = {"female": "female", "male": "male", "other": "other"}
PURPOSES = {  # grant purpose → v3 PurposeOfUse (ActReason)
    GrantPurpose.TREATMENT: "TREAT",
    GrantPurpose.SECOND_OPINION: "TREAT",
    GrantPurpose.RESEARCH: "HRESCH",
    GrantPurpose.OTHER: "HOPERAT",
    GrantPurpose.EMERGENCY: "ETREAT",
}
EVENT_PURPOSES = {"treatment": "TREAT", "research": "HRESCH", "emergency": "ETREAT", "second_opinion": "TREAT"}
ENCOUNTER_CLASS = {"outpatient": "AMB", "emergency": "EMER", "inpatient": "IMP", "telehealth": "VR"}
FLAGS = {"high": "H", "low": "L", "abnormal": "A", "critical": "AA", "normal": "N"}
AUDIT_ACTIONS = {  # our action → FHIR AuditEvent.action (C, R, U, D, E)
    AccessEvent.Action.VIEW: "R",
    AccessEvent.Action.DOWNLOAD: "R",
    AccessEvent.Action.VIEW_CHART: "R",
    AccessEvent.Action.CREATE: "C",
    AccessEvent.Action.UPLOAD: "C",
    AccessEvent.Action.EDIT: "U",
    AccessEvent.Action.FINALIZE: "U",
    AccessEvent.Action.AMEND: "U",
    AccessEvent.Action.DISCARD: "D",
}


def ref(resource_type: str, rid: object) -> dict:
    return {"reference": f"{resource_type}/{rid}"}


def _when(value) -> str | None:
    return value.isoformat() if value else None


def _person(user) -> dict:
    return {"display": user.display_name, "identifier": {"system": "urn:yilian:person", "value": str(user.public_id)}}


def _clean(resource: dict) -> dict:
    """Drop empty values: FHIR forbids empty strings, lists and objects."""
    out: dict = {}
    for key, value in resource.items():
        if isinstance(value, dict):
            value = _clean(value)
        elif isinstance(value, list):
            value = [_clean(v) if isinstance(v, dict) else v for v in value if v not in (None, "", [], {})]
        if value not in (None, "", [], {}):
            out[key] = value
    return out


# -- people and visits ---------------------------------------------------------------------------------
def patient(user) -> dict:
    return _clean(
        {
            "resourceType": "Patient",
            "id": str(user.public_id),
            "identifier": [{"system": YILIAN_ID, "value": user.health_id or ""}],
            "name": [{"text": user.name or user.display_name}]
            + ([{"text": user.name_en, "use": "usual"}] if user.name_en else []),
            "gender": GENDERS.get(user.sex or "", "unknown"),
            "birthDate": user.birth_date.isoformat() if user.birth_date else None,
        }
    )


def encounter(visit: Visit) -> dict:
    return _clean(
        {
            "resourceType": "Encounter",
            "id": str(visit.public_id),
            "status": "in-progress" if visit.status == Visit.Status.OPEN else "finished",
            "class": {"system": ACT_CODE, "code": ENCOUNTER_CLASS.get(visit.kind, "AMB")},
            "subject": ref("Patient", visit.patient.public_id),
            "period": {"start": _when(visit.opened_at), "end": _when(visit.closed_at)},
            "serviceProvider": {"display": visit.institution.display_name},
        }
    )


# -- records ---------------------------------------------------------------------------------------------
def record_resources(record: MedicalRecord, version: RecordVersion, content: dict, files: list) -> list[dict]:
    """The resources one decrypted version becomes; ``files``: (RecordFile, name) pairs."""
    common = {
        "subject": ref("Patient", record.patient.public_id),
        "encounter": ref("Encounter", record.visit.public_id) if record.visit_id else None,
    }
    final = record.status != MedicalRecord.Status.DRAFT
    title = content.get("title") or record.get_kind_display()
    rid = str(record.public_id)
    build = _BUILDERS.get(record.kind, _document)
    resources = build(rid, record, version, content, common, final, title)
    attachments = [_attachment(record, version, f, name) for f, name in files]
    if attachments and record.kind not in (RecordKind.NOTE, RecordKind.DOCUMENT):
        resources.append(
            _clean(
                {
                    "resourceType": "DocumentReference",
                    "id": f"{rid}-files",
                    "status": "current",
                    "docStatus": "final" if final else "preliminary",
                    "description": title,
                    "date": _when(version.finalized_at or version.created_at),
                    "subject": common["subject"],
                    "content": [{"attachment": a} for a in attachments],
                    # The record these files belong to: an import attaches them to it again.
                    "context": {"related": [ref(MAIN_TYPE[record.kind], _main_id(record))]},
                }
            )
        )
    elif attachments:
        resources[0]["content"].extend({"attachment": a} for a in attachments)
    return [_clean(r) for r in resources]


def _attachment(record, version, record_file, name: str) -> dict:
    url = reverse("api_record_file", args=[record.public_id, record_file.public_id])
    if version.pk != record.current_version_id:
        url += f"?version={version.number}"
    return {
        "contentType": record_file.media_type,
        "url": url,
        "size": record_file.size,
        "title": name,
        "extension": [{"url": CID_SYSTEM, "valueString": record_file.root_cid}] if record_file.root_cid else None,
    }


def _medications(rid, record, version, content, common, final, title) -> list[dict]:
    out = []
    for i, med in enumerate(content.get("medications") or [], start=1):
        dosage = " · ".join(p for p in (med.get("dose"), med.get("frequency"), med.get("duration")) if p)
        out.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"{rid}-m{i}",
                "status": "active" if final else "draft",
                "intent": "order",
                "medicationCodeableConcept": {"text": med.get("name") or "-"},
                **common,
                "authoredOn": _when(version.finalized_at or version.created_at),
                "requester": _person(record.author),
                "dosageInstruction": [
                    {"text": dosage or None, "route": {"text": med.get("route")} if med.get("route") else None}
                ],
                "note": [{"text": content["instructions"]}] if content.get("instructions") else None,
                "groupIdentifier": {"system": RECORD_SYSTEM, "value": rid},
                "extension": [
                    {"url": f"{EXT}/{name}", "valueString": value}
                    for name, value in (
                        ("title", title),
                        ("dose", med.get("dose")),
                        ("frequency", med.get("frequency")),
                        ("duration", med.get("duration")),
                    )
                    if value
                ],
            }
        )
    return out


def _lab(rid, record, version, content, common, final, title) -> list[dict]:
    observations = []
    for i, row in enumerate(content.get("observations") or [], start=1):
        value = (row.get("value") or "").strip()
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"{rid}-o{i}",
            "status": "final" if final else "preliminary",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
            "code": {"text": row.get("name") or "-"},
            **common,
            "effectiveDateTime": _when(version.created_at),
            "referenceRange": [{"text": row["reference_range"]}] if row.get("reference_range") else None,
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": FLAGS[row["flag"]]}]}]
            if row.get("flag") in FLAGS
            else None,
        }
        try:
            observation["valueQuantity"] = {"value": float(value), "unit": row.get("unit") or None}
        except ValueError:
            observation["valueString"] = " ".join(p for p in (value, row.get("unit")) if p) or None
        observations.append(observation)
    report = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "final" if final else "preliminary",
        "category": [{"coding": [{"system": REPORT_CATEGORY, "code": "LAB"}]}],
        "code": {"text": title},
        **common,
        "effectiveDateTime": _when(version.created_at),
        "issued": _when(version.finalized_at),
        "performer": [_person(record.author)],
        "result": [ref("Observation", o["id"]) for o in observations],
        "conclusion": content.get("comment"),
        "extension": [{"url": f"{EXT}/specimen", "valueString": content["specimen"]}]
        if content.get("specimen")
        else None,
    }
    return [report, *observations]


def _pathology(rid, record, version, content, common, final, title) -> list[dict]:
    return [
        {
            "resourceType": "DiagnosticReport",
            "id": rid,
            "status": "final" if final else "preliminary",
            "category": [{"coding": [{"system": REPORT_CATEGORY, "code": "PAT"}]}],
            "code": {"text": title},
            **common,
            "effectiveDateTime": _when(version.created_at),
            "issued": _when(version.finalized_at),
            "performer": [_person(record.author)],
            "conclusion": content.get("diagnosis"),
            "presentedForm": [_text_attachment(content.get("findings"), title)] if content.get("findings") else None,
            "extension": [{"url": f"{EXT}/specimen", "valueString": content["specimen"]}]
            if content.get("specimen")
            else None,
        }
    ]


def _imaging(rid, record, version, content, common, final, title) -> list[dict]:
    notes = [content.get("findings"), content.get("impression")]
    return [
        {
            "resourceType": "ImagingStudy",
            "id": rid,
            "status": "available" if final else "registered",
            **common,
            "started": _when(version.created_at),
            "modality": [{"system": DICOM, "code": content["modality"]}] if content.get("modality") else None,
            "description": title,
            "reasonCode": [{"text": content["body_site"]}] if content.get("body_site") else None,
            "note": [{"text": n} for n in notes if n],
            "extension": [
                {"url": f"{EXT}/{name}", "valueString": content[name]}
                for name in ("findings", "impression")
                if content.get(name)
            ],
            "interpreter": [_person(record.author)],
        }
    ]


def _document(rid, record, version, content, common, final, title) -> list[dict]:
    text = content.get("text") or content.get("description") or ""
    return [
        {
            "resourceType": "DocumentReference",
            "id": rid,
            "status": "current",
            "docStatus": "final" if final else "preliminary",
            "type": {"text": "clinical note" if record.kind == RecordKind.NOTE else "patient document"},
            "description": title,
            "date": _when(version.finalized_at or version.created_at),
            "subject": common["subject"],
            "author": [_person(record.author)],
            "context": {"encounter": [common["encounter"]]} if common["encounter"] else None,
            "content": [{"attachment": _text_attachment(text, title)}] if text else [],
        }
    ]


def _text_attachment(text: str, title: str) -> dict:
    return {
        "contentType": "text/plain; charset=utf-8",
        "data": base64.b64encode(text.encode()).decode(),
        "title": title,
    }


_BUILDERS: dict[str, Callable[..., list[dict]]] = {
    RecordKind.PRESCRIPTION: _medications,
    RecordKind.LAB_REPORT: _lab,
    RecordKind.PATHOLOGY: _pathology,
    RecordKind.IMAGING: _imaging,
}
MAIN_TYPE = {
    RecordKind.PRESCRIPTION: "MedicationRequest",
    RecordKind.LAB_REPORT: "DiagnosticReport",
    RecordKind.PATHOLOGY: "DiagnosticReport",
    RecordKind.IMAGING: "ImagingStudy",
    RecordKind.NOTE: "DocumentReference",
    RecordKind.DOCUMENT: "DocumentReference",
}


def _main_id(record: MedicalRecord) -> str:
    return f"{record.public_id}-m1" if record.kind == RecordKind.PRESCRIPTION else str(record.public_id)


def provenance(record: MedicalRecord, version: RecordVersion, targets: list[dict], anchor: dict | None) -> dict:
    """Who signed this version, when; the signature's data is its anchor on the chain with the merkle proof."""
    signed = _when(version.finalized_at or version.created_at)
    data = {
        "transaction": version.anchor_tx,
        "root_cid": version.root_cid,
        "commitment": version.commitment,
        "block": (anchor or {}).get("block_cid"),
        "height": (anchor or {}).get("height"),
        "tx_root": (anchor or {}).get("tx_root"),
        "merkle_proof": (anchor or {}).get("proof"),
    }
    return _clean(
        {
            "resourceType": "Provenance",
            "id": f"{record.public_id}-v{version.number}",
            "target": [ref(t["resourceType"], t["id"]) for t in targets],
            "recorded": signed,
            "agent": [{"type": {"text": "author"}, "who": _person(version.created_by)}],
            "signature": [
                {
                    "type": [{"system": SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.1"}],
                    "when": signed,
                    "who": _person(version.created_by),
                    "sigFormat": "application/json",
                    "data": base64.b64encode(json.dumps(data, sort_keys=True).encode()).decode(),
                }
            ]
            if version.anchor_tx
            else None,
        }
    )


# -- sharing and the footprint -----------------------------------------------------------------------------
def consent(grant: Grant) -> dict:
    who = grant.grantee_user or grant.grantee_institution
    data = [{"meaning": "instance", "reference": {"reference": f"urn:uuid:{r.public_id}"}} for r in grant.records.all()]
    return _clean(
        {
            "resourceType": "Consent",
            "id": str(grant.public_id),
            "status": "active" if grant.status == Grant.Status.ACTIVE else "inactive",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": CONSENT_CATEGORY, "code": "59284-0"}]}],
            "patient": ref("Patient", grant.patient.public_id),
            "dateTime": _when(grant.created_at),
            "identifier": [{"system": "urn:yilian:grant-tx", "value": grant.issued_tx}] if grant.issued_tx else None,
            "provision": {
                "type": "permit",
                "period": {"start": _when(grant.valid_from), "end": _when(grant.valid_until)},
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                    "code": "PROV" if grant.grantee_user_id else "ORG",
                                }
                            ]
                        },
                        "reference": {"display": who.display_name, "identifier": {"value": str(who.public_id)}},
                    }
                ],
                "purpose": [{"system": ACT_REASON, "code": PURPOSES.get(grant.purpose, "HOPERAT")}],
                "class": [{"code": k} for k in grant.kinds or []],
                "data": data,
            },
        }
    )


def audit_event(event: AccessEvent, proof: Any = None) -> dict:
    return _clean(
        {
            "resourceType": "AuditEvent",
            "id": str(event.public_id),
            "type": {"system": AUDIT_TYPE, "code": "110110", "display": "Patient Record"},
            "subtype": [{"code": event.action}],
            "action": AUDIT_ACTIONS.get(event.action, "E"),
            "recorded": _when(event.at),
            "outcome": "0" if event.outcome == AccessEvent.Outcome.ALLOWED else "4",
            "outcomeDesc": event.detail,
            "purposeOfEvent": [
                {"coding": [{"system": ACT_REASON, "code": EVENT_PURPOSES.get(event.purpose, "HOPERAT")}]}
            ],
            "agent": [
                {
                    "who": _person(event.actor) if event.actor else {"display": "anonymous"},
                    "requestor": True,
                    "name": event.actor_institution.display_name if event.actor_institution else None,
                    "policy": [event.basis] if event.basis else None,
                }
            ]
            + ([{"who": {"display": event.client}, "requestor": False}] if event.client else []),
            "source": {"observer": {"display": "Yilian"}, "site": event.chain_tx or None},
            "entity": [
                {"what": {"reference": f"urn:uuid:{event.record.public_id}"}} if event.record else None,
                {"what": ref("Patient", event.patient.public_id)} if event.patient else None,
                {"name": "chain-proof", "detail": [{"type": "proof", "valueString": json.dumps(proof)}]}
                if proof
                else None,
            ],
        }
    )


# -- validation --------------------------------------------------------------------------------------------
def validate(resource: dict) -> dict:
    """``resource`` unchanged if ``fhir.resources`` (R4B) accepts it; its ``ValidationError`` otherwise."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource
