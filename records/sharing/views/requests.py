"""Access requests and notifications: the doctor asks, the patient decides, both are told.

Thin views: the patient's own requests only (another patient's request id is
404), the form, then ``records.sharing.requests`` services.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.access import patient_data_gate, role_required
from accounts.models import Role
from chain.ledger_services import TxRejected
from records.clinical import services as clinical
from records.clinical.forms import VisitOpenForm
from records.models import AccessRequest, Notification, Visit
from records.notices import with_texts
from records.policy import grants_usable_by
from records.sharing import requests as services
from records.sharing.forms import AccessRequestForm, RequestApproveForm

NOTIFICATIONS_SHOWN = 100


def _errors(exc) -> str:
    return " ".join(getattr(exc, "messages", [str(exc)]))


def doctor_requests(user) -> list[AccessRequest]:
    return list(
        AccessRequest.objects.filter(requester=user).select_related("patient", "grant").order_by("-created_at")[:100]
    )


@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_request_new(request):
    form = AccessRequestForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            access_request = services.access_request_create(
                requester=request.user,
                patient=data["patient"],
                scope=data["scope"],
                kinds=data.get("kinds") or (),
                purpose=data["purpose"],
                reason=data["reason"],
                days=data["days"],
                asked_as=form.asked_as,
            )
        except (PermissionDenied, ValidationError) as exc:
            form.add_error(None, _errors(exc))
        except TxRejected:
            form.add_error(None, _("The request could not be recorded on the chain yet; please try again in a minute."))
        else:
            messages.success(
                request,
                _(
                    "Request sent. If %(who)s is a Yilian patient, they are notified and can approve or decline it; "
                    "you see their name here once they approve."
                )
                % {"who": access_request.asked_as},
            )
            return redirect("clinic_patients")
    context = clinic_patients_context(request.user, request_form=form)
    return render(request, "clinic/patients.html", context, status=400)


def pending_requests_for(patient) -> list[AccessRequest]:
    """The patient's pending requests, each with its reason opened and a default end date."""
    pending = list(
        AccessRequest.objects.filter(patient=patient, status=AccessRequest.Status.PENDING)
        .select_related("requester", "requester_institution")
        .order_by("-created_at")
    )
    today = timezone.localdate()
    for item in pending:
        item.reason = services.access_request_reason(item, user=patient)
        item.default_until = today + timedelta(days=item.requested_days - 1)
    return pending


def _own_request(user, request_id) -> AccessRequest:
    item = AccessRequest.objects.filter(public_id=request_id, patient=user).first()
    if item is None:
        raise Http404("no such request")
    return item


@require_POST
@role_required(Role.PATIENT)
def patient_request_approve(request, request_id):
    item = _own_request(request.user, request_id)
    form = RequestApproveForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("valid_until", [_("Choose an end date.")])))
        return redirect("patient_sharing")
    try:
        item = services.access_request_approve(patient=request.user, request=item, valid_until=form.valid_until_at())
    except (PermissionDenied, ValidationError) as exc:
        messages.error(request, _errors(exc))
    except TxRejected:
        messages.error(request, _("The grant could not be recorded on the chain yet; please try again in a minute."))
    else:
        messages.success(
            request, _("%(name)s can now read what they asked for.") % {"name": item.requester.display_name}
        )
    return redirect("patient_sharing")


@require_POST
@role_required(Role.PATIENT)
def patient_request_decline(request, request_id):
    item = _own_request(request.user, request_id)
    try:
        item = services.access_request_decline(patient=request.user, request=item)
    except (PermissionDenied, ValidationError) as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, _("Request from %(name)s declined.") % {"name": item.requester.display_name})
    return redirect("patient_sharing")


@require_POST
@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_request_withdraw(request, request_id):
    item = AccessRequest.objects.filter(public_id=request_id, requester=request.user).first()
    if item is None:
        raise Http404("no such request")
    try:
        item = services.access_request_withdraw(requester=request.user, request=item)
    except (PermissionDenied, ValidationError) as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, _("Your request to %(name)s is withdrawn.") % {"name": item.patient.display_name})
    return redirect(reverse("clinic_patients") + "#my-requests")


@login_required
def notifications(request):
    items = list(Notification.objects.filter(user=request.user).order_by("-created_at")[:NOTIFICATIONS_SHOWN])
    with_texts(items)
    unread = {n.pk for n in items if n.read_at is None}
    services.notifications_mark_read(user=request.user, notifications=items)
    return render(request, "notifications.html", {"items": items, "unread": unread})


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_patients(request):
    user = request.user
    form = VisitOpenForm(request.POST or None, clinician=user)
    if request.method == "POST" and form.is_valid():
        patient, kind = form.cleaned_data["patient"], form.cleaned_data["kind"]
        current = _open_visit_of(user, patient, kind)
        if current is not None:  # a second click, or a doctor who forgot the visit is still open
            message = _("Your visit with %(name)s is still open; continue it here.")
            messages.info(request, message % {"name": patient.display_name})
            return redirect("clinic_visit", visit_id=current.public_id)
        try:
            visit = clinical.visit_open(clinician=user, patient=patient, kind=kind)
        except (PermissionDenied, ValidationError) as exc:
            form.add_error(None, " ".join(getattr(exc, "messages", [str(exc)])))
        else:
            messages.success(request, _("Visit opened for %(name)s.") % {"name": visit.patient.display_name})
            return redirect("clinic_visit", visit_id=visit.public_id)
    return render(request, "clinic/patients.html", clinic_patients_context(user, form=form))


def _open_visit_of(clinician, patient, kind: str) -> Visit | None:
    """The visit of this kind the clinician opened for the patient here and has not closed, if any."""
    visits = Visit.objects.filter(
        patient=patient,
        institution_id=clinician.institution_id,
        opened_by=clinician,
        kind=kind,
        status=Visit.Status.OPEN,
    )
    return visits.order_by("-opened_at").first()


def clinic_patients_context(user, *, form=None, request_form=None) -> dict:
    """The Patients page: seen here, shared with the doctor, their access requests; constant queries."""
    visits = (
        Visit.objects.filter(institution_id=user.institution_id)
        .select_related("patient", "opened_by")
        .order_by("-opened_at")[:100]
    )
    seen, patients = set(), []
    for visit in visits:
        if visit.patient_id not in seen:
            seen.add(visit.patient_id)
            patients.append(visit)
    shared = list(grants_usable_by(user).select_related("patient", "grantee_institution").order_by("valid_until")[:200])
    return {
        "form": form or VisitOpenForm(clinician=user),
        "request_form": request_form or AccessRequestForm(),
        "patients": patients,
        "shared": shared,
        "my_requests": doctor_requests(user),
    }
