"""FHIR R4 under ``/fhir/r4/``: capability, SMART configuration, read and search, ``Patient/$everything``.

Every read goes through the same access helpers as the portal and the REST
API (``records.policy``): each record decrypted for a FHIR response writes its
audit row and footprint entry, marked with the calling application. Errors
are ``OperationOutcome`` resources. Search pages with ``_count`` (at most
200) and ``_offset``, linked from the searchset Bundle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.http import Http404, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role, User
from records import audit
from records.api.access import ScopedPermission, check_kind_in_scope, client_name, kinds_in_scope, scope_allows
from records.api.oauth import SmartScopes
from records.api.views import ApiView
from records.fhir import importing, mapping
from records.fhir.resources import chunk_resources, record_resources_for
from records.footprint.services import Filters, chain_proofs, footprint_events
from records.models import Grant, MedicalRecord, RecordKind, Visit
from records.policy import (
    chart_patient_for_user,
    granted_records_q,
    grants_usable_by,
    records_shown_to_patient,
    visit_get_for_user,
)

FHIR_JSON = "application/fhir+json"
RECORD_TYPES = {
    "MedicationRequest": [RecordKind.PRESCRIPTION],
    "DiagnosticReport": [RecordKind.LAB_REPORT, RecordKind.PATHOLOGY],
    "Observation": [RecordKind.LAB_REPORT],
    "ImagingStudy": [RecordKind.IMAGING],
    "DocumentReference": list(RecordKind.values),  # notes and documents, and every record's files
    "Provenance": list(RecordKind.values),
}
EVERYTHING_CHUNK = 50
TYPES = ["Patient", "Encounter", *RECORD_TYPES, "Consent", "AuditEvent"]


class FhirParser(JSONParser):
    media_type = FHIR_JSON


class FhirRenderer(JSONRenderer):
    media_type = FHIR_JSON
    format = "fhir"


def outcome(code: str, text: str, *, severity: str = "error", issues: list[dict] | None = None) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": issues or [{"severity": severity, "code": code, "diagnostics": text}],
    }


STATUS_CODES = {
    415: "not-supported",
    413: "too-costly",
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    429: "throttled",
}


class FhirView(ApiView):
    renderer_classes = [FhirRenderer, JSONRenderer]
    parser_classes = [FhirParser, JSONParser]

    @property
    def scope_resources(self) -> tuple[str, ...]:
        return (self.kwargs.get("resource_type") or "Patient",)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, Http404):
            exc = exceptions.NotFound()
        elif isinstance(exc, PermissionDenied):
            exc = exceptions.PermissionDenied(str(exc) or None)
        response = super().handle_exception(exc)
        code = response.status_code
        detail = getattr(exc, "detail", "") or response.data.get("title", "") if isinstance(response.data, dict) else ""
        answer = Response(outcome(STATUS_CODES.get(code, "exception"), str(detail)), status=code)
        for header in ("WWW-Authenticate", "Retry-After"):
            if header in response:
                answer[header] = response[header]
        return answer


# -- discovery -----------------------------------------------------------------------------------------
class MetadataView(FhirView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        """The CapabilityStatement: what this server does."""
        base = request.build_absolute_uri(reverse("fhir_metadata")).rsplit("/metadata", 1)[0]
        resources = [
            {
                "type": t,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": "patient", "type": "reference"}] if t != "Patient" else [],
            }
            for t in TYPES
        ]
        resources[0]["operation"] = [
            {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
        ]
        statement = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": timezone.now().date().isoformat(),
            "kind": "instance",
            "software": {"name": "Yilian"},
            "implementation": {"description": "Yilian node", "url": base},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                        "code": "SMART-on-FHIR",
                                    }
                                ]
                            }
                        ],
                        "extension": [
                            {
                                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                                "extension": [
                                    {"url": "authorize", "valueUri": request.build_absolute_uri("/o/authorize/")},
                                    {"url": "token", "valueUri": request.build_absolute_uri("/o/token/")},
                                    {"url": "revoke", "valueUri": request.build_absolute_uri("/o/revoke_token/")},
                                ],
                            }
                        ],
                    },
                    "resource": resources,
                    "operation": [
                        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
                    ],
                }
            ],
        }
        return Response(mapping.validate(statement))


class SmartConfigurationView(FhirView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        """SMART App Launch discovery (``/.well-known/smart-configuration``)."""
        return Response(
            {
                "issuer": request.build_absolute_uri("/"),
                "authorization_endpoint": request.build_absolute_uri("/o/authorize/"),
                "token_endpoint": request.build_absolute_uri("/o/token/"),
                "revocation_endpoint": request.build_absolute_uri("/o/revoke_token/"),
                "introspection_endpoint": request.build_absolute_uri("/o/introspect/"),
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
                "scopes_supported": list(SmartScopes().get_all_scopes()),
                "capabilities": [
                    "launch-standalone",
                    "client-public",
                    "client-confidential-symmetric",
                    "context-standalone-patient",
                    "permission-patient",
                    "permission-user",
                ],
            },
            content_type="application/json",
        )


# -- read and search -----------------------------------------------------------------------------------
class FhirAccess(ScopedPermission):
    roles = (Role.PATIENT, Role.CLINICIAN)


class ReadView(FhirView):
    permission_classes = [FhirAccess]

    @extend_schema(exclude=True)
    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        """One resource by id."""
        if resource_type not in TYPES:
            raise exceptions.NotFound(_("This server has no resources of that type."))
        if resource_type == "Patient":
            return Response(mapping.patient(_patient_for(request, resource_id)))
        if resource_type == "Encounter":
            return Response(mapping.encounter(_visit_for(request, resource_id)))
        if resource_type == "Consent":
            grant = _grants(request).filter(public_id=_uuid(resource_id)).first()
            if grant is None:
                raise Http404("no such consent")
            return Response(mapping.consent(grant))
        if resource_type == "AuditEvent":
            event = footprint_events(request.user, Filters(include_own=True)).filter(public_id=_uuid(resource_id))
            found = list(event[:1])
            if request.user.role != Role.PATIENT or not found:
                raise Http404("no such event")
            return Response(mapping.audit_event(found[0], _proof(found[0])))
        record_id = _uuid(resource_id[:36])
        suffix = resource_id[36:]
        version = int(suffix[2:]) if resource_type == "Provenance" and suffix[2:].isdigit() else None
        for resource in _record_resources(request, record_id, version):
            if resource["resourceType"] == resource_type and resource["id"] == resource_id:
                return Response(resource)
        raise Http404("no such resource")


class SearchView(FhirView):
    permission_classes = [FhirAccess]

    @extend_schema(exclude=True)
    def get(self, request: Request, resource_type: str) -> Response:
        """A searchset Bundle; ``patient`` narrows to one patient."""
        if resource_type not in TYPES:
            raise exceptions.NotFound(_("This server has no resources of that type."))
        count, offset = _paging(request)
        patient = request.query_params.get("patient") or request.query_params.get("subject") or ""
        patient = patient.removeprefix("Patient/")
        if resource_type == "Patient":
            rows = [mapping.patient(p) for p in _patients_for(request)[offset : offset + count + 1]]
        elif resource_type == "Encounter":
            visits = _visits(request, patient)[offset : offset + count + 1]
            rows = [mapping.encounter(v) for v in visits]
        elif resource_type == "Consent":
            grants = _grants(request).order_by("-created_at")[offset : offset + count + 1]
            rows = [mapping.consent(g) for g in grants]
        elif resource_type == "AuditEvent":
            if request.user.role != Role.PATIENT:
                raise exceptions.PermissionDenied()
            events = list(footprint_events(request.user, Filters(include_own=True))[offset : offset + count + 1])
            proofs = chain_proofs(events)
            rows = [mapping.audit_event(e, _proof_doc(proofs.get(e.pk))) for e in events]
        else:
            # Pages count records: one record may give several resources of a type, or none.
            records = list(
                _records(request, patient).filter(kind__in=RECORD_TYPES[resource_type])[offset : offset + count + 1]
            )
            rows = []
            for record in records[:count]:
                rows.extend(
                    r for r in _record_resources(request, record.public_id) if r["resourceType"] == resource_type
                )
            return Response(_searchset(request, rows, count, offset, more=len(records) > count))
        return Response(_searchset(request, rows[:count], count, offset, more=len(rows) > count))


class EverythingView(FhirView):
    permission_classes = [FhirAccess]
    scope_resources = ("*",)

    @extend_schema(exclude=True)
    def get(self, request: Request, resource_id: str):
        """``Patient/{id}/$everything``: a patient's own data, streamed as one Bundle (never built whole)."""
        if request.user.role != Role.PATIENT or str(request.user.public_id) != resource_id:
            raise exceptions.PermissionDenied(_("Only patients ask for everything, and only their own."))
        stream = _everything(request.user, client_name(request), _base(request))
        response = StreamingHttpResponse(stream, content_type=f"{FHIR_JSON}; charset=utf-8")
        response["Cache-Control"] = "private, no-store"
        return response


def _everything(user: User, client: str, base: str) -> Iterator[bytes]:
    """The Bundle, entry by entry: one record decrypted (and its read recorded) at a time."""
    with audit.calling_client(client):  # the stream runs after the view has returned
        head = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset"}
        yield json.dumps(head)[:-1].encode() + b', "entry": ['
        for i, resource in enumerate(_everything_resources(user)):
            entry = {"fullUrl": _full_url(base, resource), "resource": resource}
            yield (b"," if i else b"") + json.dumps(entry, ensure_ascii=False).encode()
        yield b"]}"


def _everything_resources(user: User) -> Iterator[dict]:
    yield mapping.patient(user)
    for visit in Visit.objects.filter(patient=user).select_related("patient", "institution").order_by("opened_at"):
        yield mapping.encounter(visit)
    ids = list(records_shown_to_patient(user).order_by("created_at").values_list("public_id", flat=True))
    for start in range(0, len(ids), EVERYTHING_CHUNK):
        # One transaction per chunk: its reads are decided and audited together (a constant number of
        # queries, one bulk insert), and memory holds one chunk's resources, not the Bundle.
        with transaction.atomic():
            chunk = chunk_resources(user, ids[start : start + EVERYTHING_CHUNK])
        for _access, found in chunk:
            yield from found
    for grant in Grant.objects.filter(patient=user).select_related("patient", "grantee_user", "grantee_institution"):
        yield mapping.consent(grant)


class TransactionView(FhirView):
    """``POST /fhir/r4/``: a transaction Bundle from another EMR, imported all or nothing (fhir/importing.py)."""

    permission_classes = [FhirAccess]
    scope_resources = ("*", *RECORD_TYPES)

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        if request.user.role != Role.CLINICIAN:
            raise exceptions.PermissionDenied(_("Records are imported by clinicians, into their institution."))
        if kinds_in_scope(request, "write") is not None and not scope_allows(request, "*", "write"):
            raise exceptions.PermissionDenied(_("Importing needs the app to be allowed to write every kind of record."))
        limit = settings.FHIR_IMPORT_MAX_BYTES
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            return Response(
                outcome("too-costly", _("The Bundle is larger than %(limit)s bytes.") % {"limit": limit}), status=413
            )
        try:
            records = importing.import_bundle(clinician=request.user, bundle=request.data)
        except importing.ImportRefused as refused:
            return Response(outcome("invalid", "", issues=[i.as_fhir() for i in refused.issues]), status=400)
        entries = []
        for record in records:
            main = mapping.MAIN_TYPE[record.kind]
            rid = f"{record.public_id}-m1" if main == "MedicationRequest" else str(record.public_id)
            entries.append({"response": {"status": "201 Created", "location": f"{main}/{rid}"}})
        return Response({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}, status=200)


# -- helpers -------------------------------------------------------------------------------------------
def _record_resources(request: Request, record_id, version: int | None = None) -> list[dict]:
    check_kind_in_scope(request, record_id)
    return record_resources_for(request.user, record_id, version)


def _patient_for(request: Request, resource_id: str) -> User:
    user = request.user
    if user.role == Role.PATIENT:
        if str(user.public_id) != resource_id:
            raise exceptions.PermissionDenied()
        return user
    patient, _visit = chart_patient_for_user(user, _uuid(resource_id))
    return patient


def _patients_for(request: Request):
    user = request.user
    if user.role == Role.PATIENT:
        return User.objects.filter(pk=user.pk)
    shared = grants_usable_by(user).values("patient_id")
    seen = Visit.objects.filter(institution_id=user.institution_id).values("patient_id")
    return User.objects.filter(Q(pk__in=shared) | Q(pk__in=seen), role=Role.PATIENT).order_by("pk")


def _visit_for(request: Request, resource_id: str) -> Visit:
    user = request.user
    if user.role == Role.PATIENT:
        visit = Visit.objects.select_related("patient", "institution").filter(public_id=_uuid(resource_id)).first()
        if visit is None or visit.patient_id != user.pk:
            raise Http404("no such visit")
        return visit
    return visit_get_for_user(user, _uuid(resource_id))


def _visits(request: Request, patient: str):
    user = request.user
    rows = Visit.objects.select_related("patient", "institution").order_by("-opened_at")
    if user.role == Role.PATIENT:
        return rows.filter(patient=user)
    rows = rows.filter(institution_id=user.institution_id)
    return rows.filter(patient__public_id=_uuid(patient)) if patient else rows


def _grants(request: Request):
    if request.user.role != Role.PATIENT:
        raise exceptions.PermissionDenied()
    return Grant.objects.filter(patient=request.user).select_related("patient", "grantee_user", "grantee_institution")


def _records(request: Request, patient: str):
    user = request.user
    if user.role == Role.PATIENT:
        rows = records_shown_to_patient(user)
    else:
        rows = MedicalRecord.objects.filter(Q(author=user) | granted_records_q(list(grants_usable_by(user))))
        if patient:
            rows = rows.filter(patient__public_id=_uuid(patient))
    allowed = kinds_in_scope(request)
    if allowed is not None:
        rows = rows.filter(kind__in=allowed)
    return rows.order_by("-created_at", "-pk").only("public_id", "kind")


def _proof(event) -> dict | None:
    return _proof_doc(chain_proofs([event]).get(event.pk))


def _proof_doc(proof) -> dict | None:
    if proof is None or proof.state != "verified":
        return None
    return {"transaction": proof.tx_cid, "block": proof.block_cid, "height": proof.height, "proof": proof.proof}


def _paging(request: Request) -> tuple[int, int]:
    try:
        count = min(200, max(1, int(request.query_params.get("_count", 50))))
        offset = max(0, int(request.query_params.get("_offset", 0)))
    except ValueError:
        raise exceptions.ValidationError({"_count": [_("Counts and offsets are whole numbers.")]}) from None
    return count, offset


def _base(request: Request) -> str:
    return request.build_absolute_uri("/fhir/r4")


def _searchset(request: Request, rows: list[dict], count: int, offset: int, *, more: bool) -> dict:
    here = request.build_absolute_uri(request.path)
    query = request.query_params.copy()
    links = [{"relation": "self", "url": request.build_absolute_uri()}]
    if more:
        query["_offset"] = str(offset + count)
        links.append({"relation": "next", "url": f"{here}?{query.urlencode()}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"fullUrl": _full_url(_base(request), r), "resource": r, "search": {"mode": "match"}} for r in rows],
    }


def _full_url(base: str, resource: dict) -> str:
    return f"{base}/{resource['resourceType']}/{resource['id']}"


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404("not an id here") from None
