from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.access import mfa_required, role_required
from accounts.models import Role, User
from accounts.services import staff_unverify, staff_verify

HOME_BY_ROLE = {
    Role.PATIENT: "patient_home",
    Role.CLINICIAN: "clinic_home",
    Role.RESEARCHER: "research_home",
    Role.INSTITUTION_ADMIN: "institution_home",
    Role.OPERATOR: "ops_home",
}


def home(request):
    if not request.user.is_authenticated:
        return redirect("account_login")
    return redirect(HOME_BY_ROLE.get(request.user.role, "account_login"))


def favicon(request):
    """Pages that name no icon (the admin, the API's documentation, the 500 page) make the browser ask here.

    Not a permanent redirect: the static file's name changes with its content.
    """
    return redirect(static("img/logo.svg"))


@login_required
def profile(request):
    return render(request, "accounts/profile.html", {"account": request.user})


@role_required(Role.PATIENT)
def health_id_qr(request):
    """The patient's Yilian ID as a QR code (SVG) for a clinic's scanner: the ID, nothing else."""
    import qrcode
    from qrcode.image.svg import SvgPathImage

    image = qrcode.make(request.user.health_id_display, image_factory=SvgPathImage, box_size=12, border=2)
    response = HttpResponse(image.to_string(encoding="unicode"), content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _staff_of(user: User):
    return User.objects.filter(institution_id=user.institution_id).exclude(role=Role.PATIENT).exclude(pk=user.pk)


@role_required(Role.INSTITUTION_ADMIN)
def institution_home(request):
    # Sessions awaiting review come from records' context processor (records builds on accounts).
    staff = _staff_of(request.user)
    context = {
        "institution": request.user.institution,
        "pending_count": staff.filter(verified_at__isnull=True).count(),
        "verified_count": staff.filter(verified_at__isnull=False).count(),
    }
    return render(request, "accounts/institution_home.html", context)


@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_staff(request):
    staff = _staff_of(request.user).select_related("verified_by").order_by("verified_at", "email")
    return render(request, "accounts/institution_staff.html", {"staff": staff, "institution": request.user.institution})


def _staff_member_for_admin(request, public_id) -> User:
    # Access helper: only staff of the admin's own institution are found at all.
    return get_object_or_404(_staff_of(request.user), public_id=public_id)


@require_POST
@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_staff_verify(request, public_id):
    member = _staff_member_for_admin(request, public_id)
    try:
        staff_verify(verifier=request.user, member=member)
    except PermissionDenied:
        messages.error(request, _("You cannot verify this account."))
    else:
        messages.success(request, _("%(name)s is now verified.") % {"name": member.display_name})
    return redirect("institution_staff")


@require_POST
@role_required(Role.INSTITUTION_ADMIN)
@mfa_required
def institution_staff_unverify(request, public_id):
    member = _staff_member_for_admin(request, public_id)
    try:
        staff_unverify(verifier=request.user, member=member)
    except PermissionDenied:
        messages.error(request, _("You cannot change this account."))
    else:
        messages.success(request, _("Verification of %(name)s was withdrawn.") % {"name": member.display_name})
    return redirect("institution_staff")
