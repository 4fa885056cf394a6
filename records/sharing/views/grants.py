"""The patient's sharing page: grants listed, issued through the wizard, revoked.

Thin views: the patient's own grants only (another patient's grant id is 404),
the form, then ``records.sharing.grants`` services.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.access import role_required
from accounts.models import Role
from chain.ledger_services import TxRejected
from records.clinical import reading
from records.models import AccessEvent, Grant, MedicalRecord, RekeyJob
from records.policy import RecordAccessDenied, record_get_for_user
from records.sharing import grants as sharing
from records.sharing.forms import GrantForm
from records.sharing.views.requests import pending_requests_for


def _own_grant(user, grant_id) -> Grant:
    grant = (
        Grant.objects.select_related("grantee_user", "grantee_institution")
        .filter(public_id=grant_id, patient=user)
        .first()
    )
    if grant is None:
        raise Http404("no such grant")
    return grant


@role_required(Role.PATIENT)
def patient_sharing(request):
    now = timezone.now()
    grants = (
        Grant.objects.filter(patient=request.user)
        .select_related("grantee_user", "grantee_user__institution", "grantee_institution")
        .annotate(record_count=Count("records"))
        .order_by("-created_at")
    )
    # The latest re-keying job of each revoked grant (one query).
    jobs = {}
    for job in RekeyJob.objects.filter(grant__patient=request.user).order_by("created_at"):
        jobs[job.grant_id] = job
    groups = {"active": [], "pending": [], "past": []}
    rekeying = False
    for grant in grants:
        state = grant.state_at(now)
        grant.state = state
        grant.rekey_job = jobs.get(grant.pk)
        if grant.rekey_job is not None and grant.rekey_job.status in (RekeyJob.Status.PENDING, RekeyJob.Status.RUNNING):
            rekeying = True
        groups["past" if state in ("expired", "revoked") else state].append(grant)
    context = {"groups": groups, "now": now, "rekeying": rekeying, "requests": pending_requests_for(request.user)}
    return render(request, "patient/sharing.html", context)


def _record_titles(patient) -> list[tuple[MedicalRecord, str]]:
    records = list(
        MedicalRecord.objects.filter(patient=patient, current_version__isnull=False)
        .exclude(status=MedicalRecord.Status.DRAFT)
        .select_related("current_version")
        .order_by("-created_at")[:500]
    )
    titles = reading.titles_for(patient, [r.current_version for r in records])
    return [(r, titles.get(r.current_version_id, "")) for r in records]


@role_required(Role.PATIENT)
def patient_grant_new(request):
    titles = _record_titles(request.user)
    if request.method == "POST" and "find" in request.POST and request.POST.get("grantee_query", "").strip():
        # "Find": list the matching doctors and keep every other choice; nothing is checked yet.
        # With nothing to find it is Enter pressed in another field, which submits with the form's
        # first button (Find): the patient meant to share.
        typed = {name: request.POST.getlist(name) for name in ("kinds", "records")}
        initial = {**request.POST.dict(), **typed}
        form = GrantForm(initial=initial, patient=request.user, record_titles=titles, query=initial["grantee_query"])
        return render(request, "patient/grant_form.html", {"form": form})
    form = GrantForm(request.POST or None, patient=request.user, record_titles=titles)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            grant, issued = sharing.grant_issue_once(
                patient=request.user,
                grantee_user=data["grantee_user"],
                grantee_institution=data["grantee_institution"],
                scope=data["scope"],
                kinds=data.get("kinds") or (),
                records=data["record_objects"],
                purpose=data["purpose"],
                valid_from=data["valid_from_at"],
                valid_until=data["valid_until_at"],
                include_sensitive=data["include_sensitive"],
            )
        except (PermissionDenied, ValidationError) as exc:
            form.add_error(None, " ".join(getattr(exc, "messages", [str(exc)])))
        except TxRejected:
            form.add_error(None, _("The grant could not be recorded on the chain yet; please try again in a minute."))
        else:
            name = {"name": grant.grantee.display_name}
            if issued:
                messages.success(request, _("%(name)s can now read what you shared.") % name)
            else:
                messages.info(
                    request, _("You already share exactly this with %(name)s; nothing new was shared.") % name
                )
            return redirect("patient_sharing")
    return render(request, "patient/grant_form.html", {"form": form})


@require_POST
@role_required(Role.PATIENT)
def patient_grant_revoke(request, grant_id):
    grant = _own_grant(request.user, grant_id)
    sharing.grant_revoke(patient=request.user, grant=grant)
    messages.success(
        request,
        _("Access for %(name)s is revoked. They cannot open your records from now on.")
        % {"name": grant.grantee.display_name},
    )
    return redirect("patient_sharing")


@require_POST
@role_required(Role.PATIENT)
def record_set_sensitive(request, record_id):
    try:
        access = record_get_for_user(request.user, record_id, action=AccessEvent.Action.EDIT, quiet=True)
    except RecordAccessDenied:
        raise Http404("no such record") from None
    if not access.is_patient:
        raise Http404("no such record")
    sensitive = request.POST.get("sensitive") == "1"
    sharing.record_set_sensitive(patient=request.user, record=access.record, sensitive=sensitive)
    if sensitive:
        messages.success(request, _("Marked sensitive: shared only with grants that name this record."))
    else:
        messages.success(request, _("No longer marked sensitive."))
    return redirect("record_detail", record_id=access.record.public_id)
