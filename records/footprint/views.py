"""The patient's footprint page: who touched their data, when, why, and the chain's proof of it."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.access import forbidden
from accounts.models import Role
from records.clinical.forms import IsoDateField
from records.footprint import services as footprint
from records.models import AccessEvent, BreakGlass
from records.sharing.breakglass import break_glass_detail, break_glass_review_note

PAGE_SIZE = 50


class FootprintFilterForm(forms.Form):
    institution = forms.ChoiceField(label=gettext_lazy("Institution"), required=False)
    action = forms.ChoiceField(
        label=gettext_lazy("Action"),
        required=False,
        choices=[("", gettext_lazy("All actions")), *AccessEvent.Action.choices],
    )
    outcome = forms.ChoiceField(
        label=gettext_lazy("Outcome"),
        required=False,
        choices=[("", gettext_lazy("Allowed and denied")), *AccessEvent.Outcome.choices],
    )
    basis = forms.ChoiceField(
        label=gettext_lazy("Basis"),
        required=False,
        choices=[("", gettext_lazy("Every basis")), *footprint.BASES.items()],
    )
    date_from = IsoDateField(label=gettext_lazy("From"), required=False)
    date_to = IsoDateField(label=gettext_lazy("To"), required=False)
    mine = forms.BooleanField(label=gettext_lazy("Include my own actions"), required=False)

    def __init__(self, *args, institutions=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["institution"].choices = [("", _("All institutions"))] + [
            (inst.code, inst.display_name) for inst in institutions
        ]

    def filters(self) -> footprint.Filters:
        """The valid fields' values; an invalid field is ignored rather than failing the page."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return footprint.Filters(
            institution=data.get("institution") or "",
            action=data.get("action") or "",
            outcome=data.get("outcome") or "",
            basis=data.get("basis") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            include_own=bool(data.get("mine")),
        )


@login_required
def patient_footprint(request):
    user = request.user
    # Only a patient has a footprint; superusers are not let in either (role_required would).
    if user.role != Role.PATIENT:
        return forbidden(request, _("This page is not part of your portal."))
    form = FootprintFilterForm(request.GET, institutions=footprint.institutions_seen(user))
    filters = form.filters()
    page = footprint.footprint_page(user, filters, request.GET.get("page"), per_page=PAGE_SIZE)
    rows = footprint.footprint_rows(list(page.object_list), reader=user)
    selected = footprint.row_to_check(rows, request.GET.get("check", ""))
    today = timezone.localdate()
    chart_first = today - timedelta(days=footprint.CHART_DAYS - 1)
    counts = footprint.chart_counts(footprint.footprint_base(user, filters), first=chart_first)
    context = {
        "form": form,
        "filters": filters,
        "filtered": filters.any(),
        "page": page,
        "rows": rows,
        "chart": footprint.footprint_chart(counts, last=today),
        "selected": selected,
        "emergencies": _emergencies(user),
        "now": timezone.now(),
    }
    return render(request, "patient/footprint.html", context)


def _emergencies(patient) -> list[dict]:
    """The patient's break-glass sessions (newest first) with the clinician's own words, opened with their key."""
    from chain.core.errors import CryptoError

    items = []
    for session in BreakGlass.objects.filter(patient=patient).select_related("clinician", "institution")[:10]:
        try:
            detail = break_glass_detail(session, user=patient)
            note = break_glass_review_note(session, user=patient)
        except CryptoError:  # one unreadable reason must not hide the others
            detail = note = ""
        items.append({"session": session, "detail": detail, "review_note": note})
    return items
