"""The patient's card page: their Yilian ID, a one-time code for another node's hospital, who has the card."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.utils import timezone

from accounts.access import role_required
from accounts.models import Role
from chain.cluster import in_consortium
from records.consortium.cards import CODE_LIFETIME, card_code_issue, card_releases, display_code


@role_required(Role.PATIENT)
def patient_card(request):
    code = expires = None
    if request.method == "POST":
        try:
            raw, row = card_code_issue(request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            code, expires = display_code(raw), timezone.localtime(row.expires_at)
    context = {
        "consortium": in_consortium(),
        "code": code,
        "expires": expires,
        "lifetime_minutes": int(CODE_LIFETIME.total_seconds() // 60),
        "releases": card_releases(request.user),
    }
    response = render(request, "patient/card.html", context)
    response["Cache-Control"] = "no-store"  # the code is shown once and never kept in a cache
    return response
