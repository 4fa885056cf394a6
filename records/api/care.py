"""The REST API's uploads, access requests and break-glass: the portal's clinic and sharing pages as operations.

Uploads are read through the portal's encrypting handler before anything else
can read the body (a session's CSRF check parses a form), so no plaintext
byte reaches the disk; whatever is refused leaves no spool file. Access
requests and break-glass call ``records.sharing`` as the portal's pages do,
with the same forms checking the input and the same audit rows.
"""

from __future__ import annotations

import re

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, QueryDict
from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, DataAndFiles
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from emr_site.api import PAGE_PARAMETERS, paged, problem, refusals
from records.api import serializers as out
from records.api.access import (
    CLINICIANS,
    PATIENTS,
    PATIENTS_AND_CLINICIANS,
    RECORD_RESOURCES,
    kinds_in_scope,
    token_scopes,
)
from records.api.views import ApiView, RecordDetailView
from records.clinical import services as clinical
from records.clinical.forms import DocumentForm
from records.clinical.uploads import (
    RAW_UPLOAD,
    EncryptingUploadHandler,
    parse_upload,
    upload_fields,
    uploaded_files,
)
from records.models import (
    AccessEvent,
    AccessRequest,
    BreakGlass,
    BreakGlassReason,
    GrantPurpose,
    GrantScope,
    RecordKind,
)
from records.policy import record_get_for_user
from records.sharing import breakglass, emergency
from records.sharing import requests as asking
from records.sharing.forms import CHOSEN_PURPOSES, AccessRequestForm, BreakGlassForm, RequestApproveForm


# -- uploads ---------------------------------------------------------------------------------------
class _UploadParser(BaseParser):
    """An upload's body, read through the view's encrypting handler.

    A form is read when first asked for (the OAuth2 authentication reads every
    body), and only for a caller who may be somebody: a session or a token. A raw
    body is read once the caller is known and allowed (:meth:`UploadView.read_files`).
    """

    def parse(self, stream, media_type=None, parser_context=None) -> DataAndFiles:
        view, django_request = parser_context["view"], parser_context["request"]._request
        somebody = "HTTP_AUTHORIZATION" in django_request.META or django_request.user.is_authenticated
        if self.media_type == RAW_UPLOAD or not somebody:
            return DataAndFiles(QueryDict(), MultiValueDict())
        view.upload_refusal = parse_upload(django_request, view.upload_handler)
        return DataAndFiles(django_request.POST, django_request.FILES)


class _FormUploadParser(_UploadParser):
    media_type = "multipart/form-data"


class _RawUploadParser(_UploadParser):
    media_type = RAW_UPLOAD


class UploadView(ApiView):
    """An endpoint whose body is a file: the encrypting handler is in place before anything reads it."""

    parser_classes = [_FormUploadParser, _RawUploadParser]

    def dispatch(self, request, *args, **kwargs):
        self.upload_handler = EncryptingUploadHandler(request)
        self.upload_refusal = None
        request.upload_handlers = [self.upload_handler]
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            self.upload_handler.discard_unclaimed()  # refused, failed or not claimed: no spool file stays

    def read_files(self, request: Request) -> tuple[list, Response | None]:
        """The spooled files, or the refusal (400 unreadable or empty, 413 too large, 415 not accepted)."""
        django_request = request._request
        refused = self.upload_refusal or parse_upload(django_request, self.upload_handler)
        if refused is not None:
            return [], problem(refused.status, refused.message, instance=request.path)
        files = uploaded_files(django_request, self.upload_handler)
        if not files:
            message = _("Choose a file to upload.")
            return [], problem(400, message, errors={"file": [message]}, instance=request.path)
        return files, None


FILE_BODY = {
    "application/octet-stream": {"type": "string", "format": "binary"},
    "multipart/form-data": {
        "type": "object",
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        "required": ["file"],
    },
}
RAW_NAME = OpenApiParameter(
    "X-Upload-Name",
    str,
    OpenApiParameter.HEADER,
    description="A raw body's file name, URL-encoded (or send Content-Disposition with filename).",
)


class UploadedFile(serializers.Serializer):
    name = serializers.CharField()
    media_type = serializers.CharField()
    size = serializers.IntegerField()


class RecordFilesView(UploadView):
    permission_classes = [CLINICIANS]
    scope_resources = RECORD_RESOURCES

    @extend_schema(
        operation_id="records_files_upload",
        request=FILE_BODY,
        parameters=[RAW_NAME],
        responses={
            201: inline_serializer(
                "FilesUploaded", {"record": serializers.UUIDField(), "files": UploadedFile(many=True)}
            ),
            **refusals(400, 403, 404, 409, 413, 415),
        },
        tags=["records"],
    )
    def post(self, request: Request, record_id) -> Response:
        """Attach files to a draft (its author only): one raw body, or a form's ``file`` parts.

        They are encrypted as they arrive, then stored and anchored with the record when it is signed.
        """
        access = record_get_for_user(request.user, record_id, action=AccessEvent.Action.UPLOAD)
        record = access.record
        if record.author_id != request.user.pk or record.status != record.Status.DRAFT:
            message = _("Only the author changes a draft, and only until it is signed.")
            return problem(409, message, instance=request.path)
        allowed = kinds_in_scope(request, "write")
        if allowed is not None and record.kind not in allowed:
            raise PermissionDenied(_("The app was not given access to this kind of record."))
        files, refused = self.read_files(request)
        if refused is not None:
            return refused
        clinical.record_save_draft(access=access, uploads=files)
        for upload in files:
            upload.claimed = True
        body = {
            "record": str(record.public_id),
            "files": [{"name": f.name, "media_type": f.media_type, "size": f.size} for f in files],
        }
        return Response(body, status=status.HTTP_201_CREATED)


DOCUMENT_BODY = {
    "multipart/form-data": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 200},
            "description": {"type": "string"},
            "file": {"type": "string", "format": "binary"},
        },
        "required": ["title", "file"],
    },
    "application/octet-stream": {"type": "string", "format": "binary"},
}
DOCUMENT_FIELDS = OpenApiParameter(
    "X-Upload-Fields",
    str,
    OpenApiParameter.HEADER,
    description='With a raw body: the fields as URL-encoded JSON, {"title": …, "description": …}.',
)


class DocumentUploadView(UploadView):
    permission_classes = [PATIENTS]
    scope_resources = ("DocumentReference",)

    @extend_schema(
        operation_id="documents_upload",
        request=DOCUMENT_BODY,
        parameters=[RAW_NAME, DOCUMENT_FIELDS],
        responses={201: out.RecordDetail, **refusals(400, 403, 413, 415)},
        tags=["records"],
    )
    def post(self, request: Request) -> Response:
        """A patient's own document (a PDF, an image, a DICOM file) with its title: their record, signed by them."""
        files, refused = self.read_files(request)
        if refused is not None:
            return refused
        form = DocumentForm(upload_fields(request._request))
        if not form.is_valid():
            raise DjangoValidationError({k: list(v) for k, v in form.errors.items()})
        record = clinical.document_upload(
            patient=request.user,
            title=form.cleaned_data["title"],
            description=form.cleaned_data.get("description", ""),
            upload=files[0],
        )
        files[0].claimed = True
        answer = RecordDetailView().get_as(request, record.public_id)
        answer.status_code = status.HTTP_201_CREATED
        return answer


# -- access requests ---------------------------------------------------------------------------------
class AccessRequestOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    patient = serializers.SerializerMethodField(help_text="The patient, once known to the asker (after approval).")
    asked_as = serializers.CharField(help_text="What the doctor typed: a Yilian ID or an email address.")
    requester = serializers.CharField(source="requester.display_name")
    requester_id = serializers.UUIDField(source="requester.public_id")
    institution = serializers.CharField(source="requester_institution.display_name")
    scope = serializers.ChoiceField(choices=GrantScope.choices)
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=RecordKind.choices))
    purpose = serializers.ChoiceField(choices=GrantPurpose.choices)
    reason = serializers.SerializerMethodField(help_text="Read by the patient and the doctor only; stored encrypted.")
    requested_days = serializers.IntegerField()
    status = serializers.ChoiceField(choices=AccessRequest.Status.choices)
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    grant = serializers.UUIDField(source="grant.public_id", allow_null=True, default=None)

    def get_patient(self, item: AccessRequest) -> dict | None:
        viewer = self.context["user"]
        shown = item.patient is not None and (viewer.pk == item.patient_id or item.status == item.Status.APPROVED)
        return {"id": str(item.patient.public_id), "name": item.patient.display_name} if shown else None

    def get_reason(self, item: AccessRequest) -> str:
        return asking.access_request_reason(item, user=self.context["user"])


class AccessRequestIn(serializers.Serializer):
    patient = out.Text(max_length=254, help_text="The patient's Yilian ID or email address.")
    scope = serializers.ChoiceField(choices=[GrantScope.ALL, GrantScope.KINDS])
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=RecordKind.choices), required=False)
    purpose = serializers.ChoiceField(choices=CHOSEN_PURPOSES)
    reason = out.Text(max_length=1000)
    days = serializers.IntegerField(min_value=1, max_value=365)


def _requests_of(user):
    rows = AccessRequest.objects.select_related("patient", "requester", "requester_institution", "grant")
    if user.role == Role.PATIENT:
        return rows.filter(patient=user)
    return rows.filter(requester=user)


def _form_errors(form) -> DjangoValidationError:
    return DjangoValidationError({k: list(v) for k, v in form.errors.items()})


class AccessRequestListView(ApiView):
    permission_classes = [PATIENTS_AND_CLINICIANS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="access_requests_list",
        parameters=[OpenApiParameter("status", str, enum=AccessRequest.Status.values), *PAGE_PARAMETERS],
        responses={200: paged(AccessRequestOut), **refusals(400, 403)},
        tags=["sharing"],
    )
    def get(self, request: Request) -> Response:
        """A patient's requests for their records; a clinician's own requests. Newest first."""
        rows = _requests_of(request.user)
        wanted = request.query_params.get("status")
        if wanted is not None:
            if wanted not in AccessRequest.Status.values:
                message = _("This value is not one of the choices.")
                return problem(400, message, errors={"status": [message]}, instance=request.path)
            rows = rows.filter(status=wanted)
        return self.paginate(request, rows, AccessRequestOut, context={"user": request.user})

    @extend_schema(
        operation_id="access_requests_create",
        request=AccessRequestIn,
        responses={201: AccessRequestOut, **refusals(400, 403, 503)},
        tags=["sharing"],
    )
    def post(self, request: Request) -> Response:
        """A clinician asks a patient for access; the patient is notified.

        The answer is the same whether or not anybody answers to ``patient``: the API never tells who is a patient.
        """
        if request.user.role != Role.CLINICIAN:
            raise PermissionDenied(_("Only verified doctors with two-factor sign-in can request access."))
        given = AccessRequestIn(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        form = AccessRequestForm({**data, "kinds": data.get("kinds") or [], "days": str(data["days"])})
        if not form.is_valid():
            raise _form_errors(form)
        cleaned = form.cleaned_data
        item = asking.access_request_create(
            requester=request.user,
            patient=cleaned["patient"],
            scope=cleaned["scope"],
            kinds=cleaned.get("kinds") or (),
            purpose=cleaned["purpose"],
            reason=cleaned["reason"],
            days=cleaned["days"],
            asked_as=form.asked_as,
        )
        item = _requests_of(request.user).get(pk=item.pk)
        return Response(AccessRequestOut(item, context={"user": request.user}).data, status=status.HTTP_201_CREATED)


class ApproveIn(serializers.Serializer):
    valid_until = serializers.DateField(
        required=False, help_text="The last day of access (inclusive); default: the days the doctor asked for."
    )


def _own_request(request: Request, request_id) -> AccessRequest:
    item = _requests_of(request.user).filter(public_id=request_id).first()
    if item is None:
        raise Http404("no such request")
    return item


def _answer(request: Request, item: AccessRequest, act) -> Response:
    """Approve, decline or withdraw a pending request with ``act``; the request as it is then (409 if answered)."""
    if item.status != AccessRequest.Status.PENDING:
        return problem(409, _("This request has already been answered."), instance=request.path)
    act()
    item = _requests_of(request.user).get(pk=item.pk)
    return Response(AccessRequestOut(item, context={"user": request.user}).data)


class AccessRequestApproveView(ApiView):
    permission_classes = [PATIENTS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="access_requests_approve",
        request=ApproveIn,
        responses={200: AccessRequestOut, **refusals(400, 403, 404, 409, 503)},
        tags=["sharing"],
    )
    def post(self, request: Request, request_id) -> Response:
        """Approve: the doctor may read what they asked for, until the day given (a grant is issued)."""
        item = _own_request(request, request_id)
        given = ApproveIn(data=request.data)
        given.is_valid(raise_exception=True)
        valid_until = None
        if given.validated_data.get("valid_until") is not None:
            form = RequestApproveForm({"valid_until": given.validated_data["valid_until"].isoformat()})
            if not form.is_valid():
                raise _form_errors(form)
            valid_until = form.valid_until_at()
        return _answer(
            request,
            item,
            lambda: asking.access_request_approve(patient=request.user, request=item, valid_until=valid_until),
        )


class AccessRequestDeclineView(ApiView):
    permission_classes = [PATIENTS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="access_requests_decline",
        request=None,
        responses={200: AccessRequestOut, **refusals(403, 404, 409)},
        tags=["sharing"],
    )
    def post(self, request: Request, request_id) -> Response:
        """Decline: the doctor is told, and nothing is shared."""
        item = _own_request(request, request_id)
        return _answer(request, item, lambda: asking.access_request_decline(patient=request.user, request=item))


class AccessRequestWithdrawView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = ("Consent",)

    @extend_schema(
        operation_id="access_requests_withdraw",
        request=None,
        responses={200: AccessRequestOut, **refusals(403, 404, 409)},
        tags=["sharing"],
    )
    def post(self, request: Request, request_id) -> Response:
        """The asking doctor takes back a request not yet answered; the patient's notice goes too."""
        item = _own_request(request, request_id)
        return _answer(request, item, lambda: asking.access_request_withdraw(requester=request.user, request=item))


# -- break-glass ------------------------------------------------------------------------------------
class BreakGlassOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    patient = serializers.SerializerMethodField()
    reason = serializers.ChoiceField(choices=BreakGlassReason.choices)
    opened_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    review = serializers.CharField(allow_blank=True, help_text="The institution's review once closed.")
    opened_tx = serializers.CharField(allow_blank=True, help_text="The opening transaction on the chain.")
    released = serializers.BooleanField(
        required=False, help_text="A patient of another node: whether their home node released their records."
    )

    def get_patient(self, session: BreakGlass) -> dict:
        return {"id": str(session.patient.public_id), "name": session.patient.display_name}


class BreakGlassIn(serializers.Serializer):
    patient = out.Text(max_length=254, help_text="The patient's Yilian ID or email address.")
    reason = serializers.ChoiceField(choices=BreakGlassReason.choices)
    detail = out.Text(max_length=1000, help_text="What is happening; read by the patient and reviewers.")
    hours = serializers.IntegerField(min_value=1, max_value=12, default=4)
    credential = out.Text(
        max_length=128,
        trim_whitespace=False,
        help_text="Re-authentication: the clinician's password, or a current authenticator code. "
        "An app may send only an authenticator code, never the password.",
    )


TOTP_CODE = re.compile(r"^\d{6}$")


class BreakGlassView(ApiView):
    permission_classes = [CLINICIANS]
    scope_resources = ("*",)

    @extend_schema(
        operation_id="break_glass_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paged(BreakGlassOut), **refusals(400, 403)},
        tags=["sharing"],
    )
    def get(self, request: Request) -> Response:
        """The clinician's own emergency sessions, newest first."""
        rows = BreakGlass.objects.filter(clinician=request.user).select_related("patient")
        return self.paginate(request, rows, BreakGlassOut, ordering="-opened_at")

    @extend_schema(
        operation_id="break_glass_open",
        request=BreakGlassIn,
        responses={201: BreakGlassOut, **refusals(400, 403, 503)},
        tags=["sharing"],
    )
    def post(self, request: Request) -> Response:
        """Open emergency access to a patient for some hours, re-authenticating; the patient sees every read.

        A wrong credential is recorded (the patient sees the attempt); five in fifteen minutes lock it.
        """
        given = BreakGlassIn(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        if token_scopes(request) is not None and not TOTP_CODE.match(data["credential"].strip()):
            message = _("An app may send only a code from your authenticator app, never your password.")
            return problem(400, message, errors={"credential": [message]}, instance=request.path)
        form = BreakGlassForm({**data, "hours": str(data["hours"])})
        if not form.is_valid():
            raise _form_errors(form)
        cleaned = form.cleaned_data
        arguments = {k: cleaned[k] for k in ("reason", "detail", "credential", "hours")}
        released = True
        try:
            if isinstance(cleaned["patient"], str):  # a Yilian ID of another node: the home node releases
                session, released = emergency.break_glass_open_remote(
                    clinician=request.user, health_id=cleaned["patient"], **arguments
                )
            else:
                session = breakglass.break_glass_open(clinician=request.user, patient=cleaned["patient"], **arguments)
        except breakglass.ReauthenticationFailed as exc:
            message = " ".join(exc.args) or _("That is not your password or a current authenticator code.")
            return problem(403, message, errors={"credential": [message]}, instance=request.path)
        session = BreakGlass.objects.select_related("patient").get(pk=session.pk)
        body = BreakGlassOut(session).data | {"released": released}
        return Response(body, status=status.HTTP_201_CREATED)
