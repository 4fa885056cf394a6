"""The REST API under ``/api/v1/``: one view per operation, each calling the portal's services and access helpers.

Every read of patient data goes through ``records.policy`` as in the
portal, so it writes the same audit row and footprint entry; the row is
marked with the application that made the call (:func:`records.audit.calling_client`).
"""

from __future__ import annotations

import hashlib
import uuid

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch, Q
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Institution, Role, User
from emr_site.api import PAGE_PARAMETERS, ApiBaseView, Page, paged, problem, refusals
from records import audit
from records.anchors import anchor_proof
from records.api import serializers as out
from records.api.access import (
    ANYONE,
    CLINICIANS,
    PATIENTS,
    PATIENTS_AND_CLINICIANS,
    RECORD_RESOURCES,
    check_kind_in_scope,
    client_name,
    kinds_in_scope,
)
from records.clinical import downloads, reading, services
from records.clinical.forms import FORMS_BY_KIND, VisitOpenForm
from records.footprint.services import Filters, footprint_events, footprint_rows
from records.models import AccessEvent, Grant, MedicalRecord, Notification, RecordKind
from records.notices import with_texts
from records.policy import (
    granted_records_q,
    grants_usable_by,
    record_get_for_user,
    records_shown_to_patient,
    visit_get_for_user,
)
from records.sharing import grants as sharing
from records.sharing.requests import notifications_mark_read

IF_MATCH = OpenApiParameter(
    "If-Match", str, OpenApiParameter.HEADER, description="The record's ETag from the last read (a stale one: 412)."
)


class ApiView(ApiBaseView):
    """Every endpoint: the audit rows it writes name the calling application."""

    def dispatch(self, request, *args, **kwargs):
        with audit.calling_client("api"):  # refined in initial() once the caller is known
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        audit.set_calling_client(client_name(request))


class NotFoundView(ApiView):
    """Any other path under /api/v1/ (an id that is not a UUID, a typo): a problem, not an HTML page."""

    permission_classes = [AllowAny]
    schema = None  # not an operation

    def initial(self, request: Request, *args, **kwargs) -> None:
        raise NotFound()

    get = post = put = patch = delete = head = options = lambda self, request, *args, **kwargs: None


# -- who am I ------------------------------------------------------------------------------------
class MeView(ApiView):
    permission_classes = [ANYONE]

    @extend_schema(operation_id="me", responses={200: out.Me, **refusals(403)}, tags=["people"])
    def get(self, request: Request) -> Response:
        """The signed-in person."""
        return Response(out.Me(request.user).data)


# -- records -------------------------------------------------------------------------------------
def _records_for(user) -> object:
    """What the caller's record list holds: a patient's timeline, or what a clinician wrote or was granted."""
    if user.role == Role.PATIENT:
        rows = records_shown_to_patient(user)
    else:
        rows = MedicalRecord.objects.filter(Q(author=user) | granted_records_q(list(grants_usable_by(user))))
    return rows.select_related("patient", "institution", "author", "current_version")


class RecordListView(ApiView):
    permission_classes = [PATIENTS_AND_CLINICIANS]
    scope_resources = RECORD_RESOURCES

    @extend_schema(
        operation_id="records_list",
        parameters=[
            OpenApiParameter("kind", str, enum=RecordKind.values, description="Only records of this kind."),
            OpenApiParameter("patient", str, description="A clinician's filter: one patient's id."),
            *PAGE_PARAMETERS,
        ],
        responses={200: paged(out.RecordSummary), **refusals(400, 403)},
        tags=["records"],
    )
    def get(self, request: Request) -> Response:
        """A patient's records, newest first; for a clinician, the records they wrote or were granted."""
        rows = _records_for(request.user)
        allowed = kinds_in_scope(request)
        if allowed is not None:
            rows = rows.filter(kind__in=allowed)
        kind = request.query_params.get("kind")
        if kind is not None:
            if kind not in RecordKind.values:
                return problem(400, _invalid("kind"), errors={"kind": [_invalid("kind")]}, instance=request.path)
            rows = rows.filter(kind=kind)
        patient = request.query_params.get("patient")
        if patient:
            try:
                rows = rows.filter(patient__public_id=uuid.UUID(patient))
            except ValueError:
                return _field_problem(request, "patient", _invalid("patient"))
        return self.paginate(request, rows, out.RecordSummary)

    @extend_schema(
        operation_id="records_create",
        request=out.RecordIn,
        responses={201: out.RecordDetail, **refusals(400, 403, 404, 409)},
        tags=["records"],
    )
    def post(self, request: Request) -> Response:
        """A clinician's new draft in an open visit of their institution; sign it with ``records/{id}/sign/``."""
        if request.user.role != Role.CLINICIAN:
            raise PermissionDenied(_("Clinical records are written by clinicians."))
        given = out.RecordIn(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        allowed = kinds_in_scope(request, "write")
        if allowed is not None and data["kind"] not in allowed:
            raise PermissionDenied(_("The app was not given access to this kind of record."))
        visit = visit_get_for_user(request.user, data["visit"], action=AccessEvent.Action.CREATE)
        form = _bound_form(data["kind"], data["content"])
        record = services.record_create(
            patient=visit.patient, author=request.user, kind=data["kind"], content=form.content(), visit=visit
        )
        answer = RecordDetailView().get_as(request, record.public_id)
        answer.status_code = status.HTTP_201_CREATED
        return answer


class RecordDetailView(ApiView):
    permission_classes = [PATIENTS_AND_CLINICIANS]
    scope_resources = RECORD_RESOURCES

    def get_as(self, request: Request, record_id) -> Response:
        """The record as ``GET`` shows it, for a write's answer (its read is recorded like any read)."""
        self.request = request
        return self.get(request, record_id)

    @extend_schema(
        operation_id="records_read",
        parameters=[OpenApiParameter("version", int, description="An earlier version's number.")],
        responses={200: out.RecordDetail, **refusals(403, 404)},
        tags=["records"],
    )
    def get(self, request: Request, record_id) -> Response:
        """One record, decrypted for the caller; the read is recorded in the patient's footprint."""
        check_kind_in_scope(request, record_id)
        access = record_get_for_user(request.user, record_id, version_number=_version(request))
        content = reading.content_of(access)
        record = access.record
        files = [
            {
                "record_file": f.record_file,
                "name": f.name,
                "url": reverse("api_record_file", args=[record.public_id, f.record_file.public_id])
                + (f"?version={access.version.number}" if access.version.pk != record.current_version_id else ""),
            }
            for f in reading.files_of(access, content)
        ]
        data = out.RecordSummary(record).data | {
            "basis": access.basis,
            "shown_version": access.version.number,
            "content": {k: v for k, v in content.items() if k != "files"},
            "files": out.RecordFileOut(files, many=True).data,
            "versions": out.VersionOut(
                record.versions.select_related("created_by").order_by("-number"), many=True
            ).data,
            "anchor": _anchor(access.version),
        }
        return Response(data, headers={"ETag": etag_of(record)})

    @extend_schema(
        operation_id="records_update_draft",
        request=out.DraftIn,
        parameters=[IF_MATCH],
        responses={200: out.RecordDetail, **refusals(400, 403, 404, 409, 412)},
        tags=["records"],
    )
    def patch(self, request: Request, record_id) -> Response:
        """Replace a draft's content (the author only); ``If-Match`` with the record's ETag."""
        given = out.DraftIn(data=request.data)
        given.is_valid(raise_exception=True)
        access = record_get_for_user(request.user, record_id, action=AccessEvent.Action.EDIT)
        check_kind_in_scope(request, record_id, mode="write")
        stale = _precondition(request, access.record)
        if stale is not None:
            return stale
        form = _bound_form(access.record.kind, given.validated_data["content"])
        services.record_update_draft(access=access, content=form.content())
        return self.get(request, record_id)


class RecordSignView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = RECORD_RESOURCES

    @extend_schema(
        operation_id="records_sign",
        request=None,
        parameters=[IF_MATCH],
        responses={200: out.RecordDetail, **refusals(403, 404, 409, 412)},
        tags=["records"],
    )
    def post(self, request: Request, record_id) -> Response:
        """Sign and finalise a draft: it is stored and anchored on the chain."""
        access = record_get_for_user(request.user, record_id, action=AccessEvent.Action.FINALIZE)
        check_kind_in_scope(request, record_id, mode="write")
        stale = _precondition(request, access.record, required=False)
        if stale is not None:
            return stale
        services.record_finalize(access=access)
        return RecordDetailView().get_as(request, record_id)


class RecordAmendView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = RECORD_RESOURCES

    @extend_schema(
        operation_id="records_amend",
        request=out.AmendIn,
        parameters=[IF_MATCH],
        responses={200: out.RecordDetail, **refusals(400, 403, 404, 409, 412, 428)},
        tags=["records"],
    )
    def post(self, request: Request, record_id) -> Response:
        """A new version of a signed record, with the reason; ``If-Match`` is required (a stale one gets 412)."""
        given = out.AmendIn(data=request.data)
        given.is_valid(raise_exception=True)
        access = record_get_for_user(request.user, record_id, action=AccessEvent.Action.AMEND)
        check_kind_in_scope(request, record_id, mode="write")
        stale = _precondition(request, access.record, required=True)
        if stale is not None:
            return stale
        data = given.validated_data
        form = _bound_form(access.record.kind, data["content"], amending=True, reason=data["reason"])
        services.record_amend(access=access, content=form.content(), reason=form.cleaned_data["amendment_reason"])
        return RecordDetailView().get_as(request, record_id)


class VisitOpenView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = ("Encounter",)

    @extend_schema(
        operation_id="visits_open",
        request=out.VisitIn,
        responses={201: out.VisitOut, **refusals(400, 403)},
        tags=["visits"],
    )
    def post(self, request: Request) -> Response:
        """Open a visit for a patient (by Yilian ID or email; another node's patient with their one-time code)."""
        given = out.VisitIn(data=request.data)
        given.is_valid(raise_exception=True)
        form = VisitOpenForm({k: str(v) for k, v in given.validated_data.items()}, clinician=request.user)
        if not form.is_valid():
            raise DjangoValidationError({k: list(v) for k, v in form.errors.items()})
        visit = services.visit_open(
            clinician=request.user, patient=form.cleaned_data["patient"], kind=form.cleaned_data["kind"]
        )
        return Response(out.VisitOut(visit).data, status=status.HTTP_201_CREATED)


class VisitCloseView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = ("Encounter",)

    @extend_schema(
        operation_id="visits_close", request=None, responses={200: out.VisitOut, **refusals(403, 404)}, tags=["visits"]
    )
    def post(self, request: Request, visit_id) -> Response:
        """Close a visit of the caller's institution."""
        visit = visit_get_for_user(request.user, visit_id)
        return Response(out.VisitOut(services.visit_close(clinician=request.user, visit=visit)).data)


class RecordFileView(ApiView):
    permission_classes = [PATIENTS_AND_CLINICIANS]
    scope_resources = RECORD_RESOURCES

    @extend_schema(
        operation_id="records_file",
        parameters=[
            OpenApiParameter("version", int, description="An earlier version's number."),
            OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="bytes=first-last (RFC 9110)"),
        ],
        responses={
            (200, "application/octet-stream"): bytes,
            (206, "application/octet-stream"): bytes,
            **refusals(403, 404, 409),
        },
        tags=["records"],
    )
    def get(self, request: Request, record_id, file_id):
        """A file of a record, decrypted as it is sent; the download is recorded in the patient's footprint."""
        check_kind_in_scope(request, record_id)
        access = record_get_for_user(
            request.user,
            record_id,
            action=AccessEvent.Action.DOWNLOAD,
            detail=f"file {file_id}",
            version_number=_version(request),
        )
        record_file, name = reading.file_for(access, file_id)
        if record_file is None:
            raise Http404("no such file")
        return downloads.file_response(request, access, record_file, name, download=True)


def _anchor(version) -> dict | None:
    if not version.anchor_tx:
        return None
    proof = anchor_proof(version.anchor_tx)
    return {
        "transaction": version.anchor_tx,
        "root_cid": version.root_cid,
        "commitment": version.commitment,
        "sealed": bool(proof.get("sealed")),
        "height": proof.get("height"),
        "block": proof.get("block_cid", ""),
    }


# -- grants --------------------------------------------------------------------------------------
def _grants_of(patient):
    return (
        Grant.objects.filter(patient=patient)
        .select_related("grantee_user", "grantee_institution")
        .prefetch_related(Prefetch("records", queryset=MedicalRecord.objects.only("public_id")))
    )


class GrantListView(ApiView):
    permission_classes = [PATIENTS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="grants_list",
        parameters=[OpenApiParameter("status", str, enum=Grant.Status.values), *PAGE_PARAMETERS],
        responses={200: paged(out.GrantOut), **refusals(400, 403)},
        tags=["sharing"],
    )
    def get(self, request: Request) -> Response:
        """The patient's grants, newest first."""
        rows = _grants_of(request.user)
        wanted = request.query_params.get("status")
        if wanted is not None:
            if wanted not in Grant.Status.values:
                return _field_problem(request, "status", _invalid("status"))
            rows = rows.filter(status=wanted)
        return self.paginate(request, rows, out.GrantOut)

    @extend_schema(
        operation_id="grants_create",
        request=out.GrantIn,
        responses={201: out.GrantOut, **refusals(400, 403)},
        tags=["sharing"],
    )
    def post(self, request: Request) -> Response:
        """Grant a verified clinician, or a whole institution, access to some of the patient's records."""
        given = out.GrantIn(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        grantee_user = grantee_institution = None
        if data.get("grantee_user"):
            grantee_user = User.objects.filter(public_id=data["grantee_user"]).select_related("institution").first()
            if grantee_user is None:
                return _field_problem(request, "grantee_user", _no_such("grantee_user"))
        if data.get("grantee_institution"):
            grantee_institution = Institution.objects.filter(code=data["grantee_institution"]).first()
            if grantee_institution is None:
                return _field_problem(request, "grantee_institution", _no_such("grantee_institution"))
        records = list(
            MedicalRecord.objects.filter(patient=request.user, public_id__in=data.get("records") or []).only("pk")
        )
        if len(records) != len(set(data.get("records") or [])):
            return _field_problem(request, "records", _no_such("records"))
        grant = sharing.grant_issue(
            patient=request.user,
            grantee_user=grantee_user,
            grantee_institution=grantee_institution,
            scope=data["scope"],
            kinds=data.get("kinds") or (),
            records=records,
            purpose=data["purpose"],
            valid_from=data.get("valid_from") or timezone.now(),
            valid_until=data["valid_until"],
            include_sensitive=data["include_sensitive"],
        )
        return Response(out.GrantOut(_grants_of(request.user).get(pk=grant.pk)).data, status=status.HTTP_201_CREATED)


class GrantRevokeView(ApiView):
    permission_classes = [PATIENTS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="grants_revoke",
        request=None,
        responses={200: out.GrantOut, **refusals(403, 404, 409)},
        tags=["sharing"],
    )
    def post(self, request: Request, grant_id) -> Response:
        """Revoke a grant now: the grantee is refused from the next request, and the records are re-keyed."""
        grant = _grants_of(request.user).filter(public_id=grant_id).first()
        if grant is None:
            raise Http404("no such grant")
        if grant.status != Grant.Status.ACTIVE:
            return problem(409, _already_ended(), instance=request.path)
        sharing.grant_revoke(patient=request.user, grant=grant)
        return Response(out.GrantOut(_grants_of(request.user).get(pk=grant.pk)).data)


# -- footprint and notifications -------------------------------------------------------------------
class FootprintView(ApiView):
    permission_classes = [PATIENTS]
    scope_resources = ("AuditEvent",)

    @extend_schema(
        operation_id="footprint_list",
        parameters=[
            OpenApiParameter("institution", str, description="An institution's code."),
            OpenApiParameter("action", str, enum=AccessEvent.Action.values),
            OpenApiParameter("outcome", str, enum=AccessEvent.Outcome.values),
            OpenApiParameter("from", str, description="First day (YYYY-MM-DD)."),
            OpenApiParameter("to", str, description="Last day (YYYY-MM-DD)."),
            OpenApiParameter("own", bool, description="Include the patient's own accesses."),
            *PAGE_PARAMETERS,
        ],
        responses={200: paged(out.FootprintEvent), **refusals(400, 403)},
        tags=["footprint"],
    )
    def get(self, request: Request) -> Response:
        """Every access to the patient's data, newest first, each with its chain proof."""
        params = request.query_params
        errors = {}
        days = {}
        for name in ("from", "to"):
            value = params.get(name) or ""
            day = parse_date(value) if value else None
            if value and day is None:
                errors[name] = [_invalid(name)]
            days[name] = day
        if params.getlist("own") and (len(params.getlist("own")) > 1 or params["own"] not in BOOLEANS):
            errors["own"] = [_invalid("own")]
        for name, allowed in (("action", AccessEvent.Action.values), ("outcome", AccessEvent.Outcome.values)):
            if params.get(name) and params[name] not in allowed:
                errors[name] = [_invalid(name)]
        if errors:
            return problem(400, next(iter(errors.values()))[0], errors=errors, instance=request.path)
        filters = Filters(
            institution=params.get("institution") or "",
            action=params.get("action") or "",
            outcome=params.get("outcome") or "",
            date_from=days["from"],
            date_to=days["to"],
            include_own=BOOLEANS.get(params.get("own", ""), False),
        )
        pager = Page()
        pager.ordering = ("-at", "-pk")
        events = pager.paginate_queryset(footprint_events(request.user, filters), request, view=self)
        rows = footprint_rows(list(events), reader=request.user)
        return pager.get_paginated_response(out.FootprintEvent(rows, many=True).data)


class NotificationListView(ApiView):
    permission_classes = [ANYONE]

    @extend_schema(
        operation_id="notifications_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(out.NotificationOut), **refusals(400, 403)},
        tags=["people"],
    )
    def get(self, request: Request) -> Response:
        """The caller's notifications, newest first, in the caller's language."""
        pager = Page()
        items = pager.paginate_queryset(Notification.objects.filter(user=request.user), request, view=self)
        return pager.get_paginated_response(out.NotificationOut(with_texts(list(items)), many=True).data)


class NotificationsReadView(ApiView):
    permission_classes = [ANYONE]

    @extend_schema(
        operation_id="notifications_read",
        request=None,
        responses={200: {"type": "object", "properties": {"marked": {"type": "integer"}}}, **refusals(403)},
        tags=["people"],
    )
    def post(self, request: Request) -> Response:
        """Mark every unread notification read."""
        unread = list(Notification.objects.filter(user=request.user, read_at__isnull=True))
        return Response({"marked": notifications_mark_read(user=request.user, notifications=unread)})


# -- clinicians ------------------------------------------------------------------------------------
class SharedWithMeView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="shared_with_me",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(out.SharedWithMe), **refusals(400, 403)},
        tags=["records"],
    )
    def get(self, request: Request) -> Response:
        """The grants patients made to this clinician or their institution that are in force now."""
        rows = grants_usable_by(request.user).select_related("patient__institution", "grantee_institution")
        pager = Page()
        pager.ordering = ("valid_until", "pk")
        page = pager.paginate_queryset(rows, request, view=self)
        for grant in page:
            grant.through_institution = grant.grantee_institution_id is not None
        return pager.get_paginated_response(out.SharedWithMe(page, many=True).data)


# -- helpers ---------------------------------------------------------------------------------------
def etag_of(record: MedicalRecord) -> str:
    """Changes with every edit of a draft, every signature and every amendment."""
    record.refresh_from_db(fields=["current_version", "status", "updated_at"])
    basis = f"{record.current_version_id}:{record.status}:{record.updated_at.isoformat()}"
    return '"' + hashlib.sha256(basis.encode()).hexdigest()[:20] + '"'


def _precondition(request: Request, record: MedicalRecord, *, required: bool = False) -> Response | None:
    """412 when ``If-Match`` names another state of the record; 428 when it is required and missing."""
    given = request.headers.get("If-Match")
    if not given:
        if required:
            return problem(
                428, _("Send If-Match with the record's ETag: amendments must say which version they amend.")
            )
        return None
    current = etag_of(record)
    if given.strip() != "*" and current not in [t.strip() for t in given.split(",")]:
        return problem(
            412, _("The record changed since you read it: read it again, then retry."), instance=request.path
        )
    return None


def _bound_form(kind: str, content: dict, *, amending: bool = False, reason: str = ""):
    """The kind's portal form, bound to the JSON content: the same checks, the same messages."""
    form = FORMS_BY_KIND[kind].bound_to(content, amending=amending, reason=reason)
    if not form.is_valid():
        raise DjangoValidationError(form.error_map())
    return form


def _version(request: Request) -> int | None:
    value = request.query_params.get("version") or ""
    return int(value) if value.isdigit() and len(value) < 10 else None


BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def _field_problem(request: Request, field: str, message: str) -> Response:
    return problem(400, message, errors={field: [message]}, instance=request.path)


def _invalid(field: str) -> str:
    return _("“%(field)s” has a value that is not allowed.") % {"field": field}


def _no_such(field: str) -> str:
    return _("“%(field)s” names nothing you may choose.") % {"field": field}


def _already_ended() -> str:
    return _("This grant has already ended.")
