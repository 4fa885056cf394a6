from __future__ import annotations

import functools

from allauth.mfa.utils import is_mfa_enabled
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from accounts.models import Role
from chain.core.crypto import key_fingerprint

NAVIGATION = {
    Role.PATIENT: [
        ("patient_home", _("My records")),
        ("patient_sharing", _("Sharing")),
        ("patient_footprint", _("Footprint")),
    ],
    Role.CLINICIAN: [("clinic_home", _("Clinic dashboard")), ("clinic_patients", _("Patients"))],
    Role.RESEARCHER: [("research_home", _("Research portal"))],
    Role.INSTITUTION_ADMIN: [
        ("institution_home", _("Institution")),
        ("institution_staff", _("Staff")),
        ("chain_dashboard", _("Chain")),
    ],
    Role.OPERATOR: [("ops_home", _("Node health")), ("chain_dashboard", _("Chain"))],
}


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_items": []}
    items = [{"url": reverse(name), "label": label, "active": False} for name, label in NAVIGATION.get(user.role, [])]
    # Only the longest matching prefix is active: /patient/footprint/ is not also "My records".
    matching = [item for item in items if request.path.startswith(item["url"])]
    if matching:
        max(matching, key=lambda item: len(item["url"]))["active"] = True
    return {
        "nav_items": items,
        "user_mfa_enabled": functools.cache(lambda: is_mfa_enabled(user)),  # asked once, and only where a page asks
        "key_fingerprint": key_fingerprint(bytes(user.enc_public)) if user.enc_public else "",
        "signing_fingerprint": key_fingerprint(bytes(user.sign_public)) if user.sign_public else "",
    }
