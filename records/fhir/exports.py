"""FHIR Bulk Data endpoints: ``$export`` kick-off, its status URL (poll, cancel) and its files.

The async pattern of the Bulk Data Access IG: the kick-off answers 202 with
the status URL in ``Content-Location``; polling answers 202 with
``X-Progress`` and ``Retry-After`` while the job runs, the manifest when it is
done, an OperationOutcome if it failed; ``DELETE`` cancels. Everything but
the kick-off is the requester's alone: anyone else gets 404.
"""

from __future__ import annotations

from django.http import Http404, StreamingHttpResponse
from django.urls import reverse
from django.utils.http import http_date
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Role
from records.api.access import client_name, scope_allows
from records.fhir import bulk
from records.fhir.views import FhirView, outcome
from records.models import BulkExport

NDJSON = "application/fhir+ndjson"
RETRY_AFTER = 5


class ExportAccess(BasePermission):
    """A signed-in institution administrator whose token (if any) may read everything.

    Cancelling asks the same scope as starting: it deletes the caller's own files, no record.
    """

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.role == Role.INSTITUTION_ADMIN):
            return False
        return scope_allows(request, "*", "read")


class KickoffView(FhirView):
    permission_classes = [ExportAccess]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        """``$export``: start an export of the institution's records."""
        if "respond-async" not in request.headers.get("Prefer", ""):
            text = _("A bulk export is asynchronous: send Prefer: respond-async.")
            return Response(outcome("invalid", text), status=400)
        try:
            asked = bulk.parse_request(request.query_params)
        except bulk.ExportRefused as refused:
            return Response(outcome("invalid", str(refused)), status=400)
        job = bulk.export_start(
            user=request.user, asked=asked, request_url=request.build_absolute_uri(), client=client_name(request)
        )
        answer = Response(outcome("informational", _("The export has started."), severity="information"), status=202)
        answer["Content-Location"] = request.build_absolute_uri(reverse("fhir_export_status", args=[job.public_id]))
        return answer


class StatusView(FhirView):
    permission_classes = [ExportAccess]

    @extend_schema(exclude=True)
    def get(self, request: Request, job_id) -> Response:
        """Poll: 202 with progress while running, the manifest when done, 500 if it failed."""
        job = _job(request, job_id)
        if job.status == BulkExport.Status.RUNNING:
            answer = Response(status=202)
            # For programs, in ASCII: a header cannot carry the caller's language without MIME-encoding it.
            answer["X-Progress"] = f"{job.done} of {job.total} records"
            answer["Retry-After"] = str(RETRY_AFTER)
            return answer
        if job.status == BulkExport.Status.FAILED:
            return Response(outcome("exception", _("The export failed; start a new one.")), status=500)
        answer = Response(
            bulk.manifest(job, base=request.build_absolute_uri("/fhir/r4")), content_type="application/json"
        )
        if job.expires_at is not None:
            answer["Expires"] = http_date(job.expires_at.timestamp())
        return answer

    @extend_schema(exclude=True)
    def delete(self, request: Request, job_id) -> Response:
        """Cancel the export (if running) and delete it and its files."""
        bulk.export_cancel(user=request.user, job=_job(request, job_id))
        return Response(outcome("informational", _("The export is deleted."), severity="information"), status=202)


class FileView(FhirView):
    permission_classes = [ExportAccess]

    @extend_schema(exclude=True)
    def get(self, request: Request, job_id, name: str):
        """One output file, decrypted as it streams; its readings go in the patients' footprints first."""
        job = _job(request, job_id)
        try:
            chunks = bulk.export_file(user=request.user, job=job, name=name)
        except FileNotFoundError:
            raise Http404("no such file") from None
        response = StreamingHttpResponse(chunks, content_type=NDJSON)
        response["Cache-Control"] = "private, no-store"
        return response


def _job(request: Request, job_id) -> BulkExport:
    try:
        return bulk.job_for_user(request.user, job_id)
    except BulkExport.DoesNotExist:
        raise Http404("no such export") from None
