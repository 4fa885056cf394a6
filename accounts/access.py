"""Who may open which part of the portals.

Patient data is reachable by patients (their own, enforced by the records
access helpers) and by staff only once their institution has verified them and
they have turned on two-factor authentication. These decorators are the gate;
the per-record decision lives in ``records``.
"""

from __future__ import annotations

from functools import wraps

from allauth.mfa.utils import is_mfa_enabled
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from accounts.models import STAFF_ROLES, Role


def forbidden(request, message: str, *, status: int = 403, recorded: bool = False):
    """The "access denied" page; ``recorded``: the message itself says this attempt is in the footprint."""
    return render(request, "403.html", {"message": message, "recorded": recorded}, status=status)


def role_required(*roles: str):
    def decorator(view):
        @login_required
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if request.user.role not in roles and not request.user.is_superuser:
                return forbidden(request, _("This page is not part of your portal."))
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def mfa_required(view):
    """For actions that decide who reaches patient data (verifying staff): 2FA first."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not is_mfa_enabled(request.user):
            messages.warning(request, _("Turn on two-factor authentication before verifying staff."))
            return redirect("mfa_activate_totp")
        return view(request, *args, **kwargs)

    return wrapped


def staff_may_open_patient_data(user) -> bool:
    return user.is_verified_staff and is_mfa_enabled(user)


def patient_data_gate(view):
    """For staff views that show patient data: verified and MFA-protected only."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        user = request.user
        if user.role == Role.PATIENT:
            return view(request, *args, **kwargs)
        if user.role not in STAFF_ROLES:
            return forbidden(request, _("This page is not part of your portal."))
        if not user.is_verified_staff:
            return forbidden(
                request,
                _(
                    "Your account is waiting for verification by your institution's "
                    "administrator. Until then you cannot see any patient data."
                ),
            )
        if not is_mfa_enabled(user):
            messages.warning(request, _("Turn on two-factor authentication before opening patient data."))
            return redirect("mfa_activate_totp")
        return view(request, *args, **kwargs)

    return wrapped
