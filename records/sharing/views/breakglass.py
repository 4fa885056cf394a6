"""Break-glass pages: the clinician opens emergency access; the institution admin reviews and closes it.

Thin views over ``records.sharing.breakglass``. A session of another institution is
404 for an admin; the clinician sees only their own sessions.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce, Least
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.access import forbidden, mfa_required, patient_data_gate, role_required
from accounts.models import Role
from chain.ledger_services import TxRejected
from records.models import AccessEvent, BreakGlass
from records.sharing import breakglass as services
from records.sharing import emergency
from records.sharing.forms import BreakGlassForm, BreakGlassReviewForm

SESSIONS_SHOWN = 50


def _errors(exc) -> str:
    return " ".join(getattr(exc, "messages", [str(exc)]))


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_break_glass(request):
    form = BreakGlassForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        released = True
        try:
            if isinstance(data["patient"], str):  # a Yilian ID of another node: the home node releases
                session, released = emergency.break_glass_open_remote(
                    clinician=request.user,
                    health_id=data["patient"],
                    reason=data["reason"],
                    detail=data["detail"],
                    credential=data["credential"],
                    hours=data["hours"],
                )
            else:
                session = services.break_glass_open(
                    clinician=request.user,
                    patient=data["patient"],
                    reason=data["reason"],
                    detail=data["detail"],
                    credential=data["credential"],
                    hours=data["hours"],
                )
        except services.ReauthenticationFailed as exc:
            form.add_error("credential", _errors(exc))
        except (PermissionDenied, ValidationError, TxRejected) as exc:
            form.add_error(None, _errors(exc))
        else:
            messages.warning(
                request,
                _("Emergency access is open until %(until)s. Every record you open is shown to the patient.")
                % {"until": timezone.localtime(session.expires_at).strftime("%H:%M")},
            )
            if session.patient.home_node and released:
                messages.info(
                    request, _("The patient's home hospital is sending their records; they appear here within seconds.")
                )
            elif session.patient.home_node:
                messages.error(
                    request,
                    _("The patient's home hospital cannot be reached: you see only the records this hospital holds."),
                )
            chart = reverse("clinic_chart", args=[session.patient.public_id])
            # While the home node's release is on its way, the chart says so and looks again by itself.
            return redirect(f"{chart}?arriving=1" if session.patient.home_node and released else chart)
    sessions = (
        BreakGlass.objects.filter(clinician=request.user)
        .select_related("patient", "closed_by")
        .order_by("-opened_at")[:SESSIONS_SHOWN]
    )
    status = 400 if request.method == "POST" else 200
    context = {"form": form, "sessions": sessions, "now": timezone.now()}
    return render(request, "clinic/break_glass.html", context, status=status)


@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_break_glass(request):
    if not services.reviewer_cleared(request.user):
        return forbidden(
            request,
            _(
                "Your account is waiting for verification by your institution's "
                "administrator. Until then you cannot see any patient data."
            ),
        )
    now = timezone.now()
    reviewable = services.sessions_for_review(request.user)
    sessions = list(reviewable.annotate(reads=Count("patient__footprint", filter=_reads_filter()))[:SESSIONS_SHOWN])
    awaiting = reviewable.filter(closed_at__isnull=True).count()
    context = {"sessions": sessions, "awaiting": awaiting, "now": now}
    return render(request, "accounts/break_glass_list.html", context)


def _reads_filter() -> Q:
    """Reads of the session's patient by its clinician under break-glass, within its window (an annotation)."""
    end = Least(Coalesce(F("closed_at"), F("expires_at")), F("expires_at"))
    return Q(
        patient__footprint__actor_id=F("clinician_id"),
        patient__footprint__basis="break-glass",
        patient__footprint__at__gte=F("opened_at"),
        patient__footprint__at__lte=end,
        patient__footprint__action__in=[AccessEvent.Action.VIEW, AccessEvent.Action.DOWNLOAD],
    )


@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_break_glass_detail(request, session_id):
    session = services.sessions_for_review(request.user).filter(public_id=session_id).first()
    if session is None or not services.may_review(request.user, session):
        raise Http404("no such session")
    form = BreakGlassReviewForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.break_glass_close(
                reviewer=request.user,
                session=session,
                review=form.cleaned_data["review"],
                note=form.cleaned_data["note"],
            )
        except (PermissionDenied, ValidationError, TxRejected) as exc:
            form.add_error(None, _errors(exc))
        else:
            messages.success(request, _("The review is recorded and the emergency access is closed."))
            return redirect("institution_break_glass")
    context = {
        "session": session,
        "detail": services.break_glass_detail(session, user=request.user),
        "review_note": services.break_glass_review_note(session, user=request.user),
        "reads": services.session_reads(session),
        "form": form,
        "state": session.state_at(timezone.now()),
    }
    return render(request, "accounts/break_glass_detail.html", context, status=400 if request.method == "POST" else 200)
