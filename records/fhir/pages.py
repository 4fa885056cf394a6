"""The institution portal's exports page: the institution's Bulk Data exports, and a button to start one.

The same service as the API's ``$export`` (``records.fhir.bulk``); the files
download through the API's file URL, which the signed-in session reaches.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods

from accounts.access import forbidden, mfa_required, role_required
from accounts.models import Role
from records.fhir import bulk
from records.models import BulkExport
from records.sharing.breakglass import reviewer_cleared

JOBS_SHOWN = 50


@require_http_methods(["GET", "POST"])
@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_exports(request):
    if not reviewer_cleared(request.user):
        return forbidden(
            request,
            _(
                "Your account is waiting for verification by your institution's "
                "administrator. Until then you cannot see any patient data."
            ),
        )
    if request.method == "POST":
        everything = bulk.ExportRequest(types=bulk.EXPORT_TYPES, since=None)
        try:
            bulk.export_start(
                user=request.user,
                asked=everything,
                request_url=request.build_absolute_uri(reverse("fhir_export")),
                client="",
            )
        except PermissionDenied as refused:
            messages.error(request, str(refused))
        else:
            messages.success(request, _("The export has started. This page shows its progress."))
        return redirect("institution_exports")
    jobs = list(
        BulkExport.objects.filter(institution_id=request.user.institution_id)
        .select_related("requested_by")
        .order_by("-created_at")[:JOBS_SHOWN]
    )
    running = any(j.status == BulkExport.Status.RUNNING for j in jobs)
    return render(request, "accounts/institution_exports.html", {"jobs": jobs, "running": running})
