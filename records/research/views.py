"""The research portal: the institute's consented datasets, their summaries and audited exports.

Thin views: the role and the patient-data gate (verified, 2FA), the dataset
through ``records.research.services.dataset_get_for_user`` (another institute's is 404,
and audited), the form, then ``records.research.services``.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from accounts.access import forbidden, patient_data_gate, role_required, staff_may_open_patient_data
from accounts.models import Role
from records.models import AccessEvent, RecordKind, ResearchExport
from records.research import services as research

MEDIA_TYPES = {
    ResearchExport.Format.CSV: ("text/csv; charset=utf-8", "csv"),
    ResearchExport.Format.FHIR: ("application/fhir+json; charset=utf-8", "fhir.json"),
}


class DatasetForm(forms.Form):
    title = forms.CharField(
        label=gettext_lazy("Title"),
        max_length=research.TITLE_MAX,
        help_text=gettext_lazy("What the dataset is for, e.g. “Blood counts in adults, 2026”."),
    )
    kinds = forms.MultipleChoiceField(
        label=gettext_lazy("Kinds of record"),
        choices=RecordKind.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": gettext_lazy("Choose at least one kind of record.")},
    )


def _errors(exc) -> str:
    return " ".join(getattr(exc, "messages", [str(exc)]))


def _home_context(user, form=None) -> dict:
    cleared = research.research_cleared(user)
    return {
        "can_open_patient_data": staff_may_open_patient_data(user),
        "datasets": list(research.datasets_for(user)) if cleared else [],
        "form": form or DatasetForm(),
        "cleared": cleared,
        "k": research.deid.K,
    }


@role_required(Role.RESEARCHER)
def research_home(request):
    return render(request, "research/home.html", _home_context(request.user))


@require_POST
@role_required(Role.RESEARCHER)
@patient_data_gate
def research_dataset_new(request):
    form = DatasetForm(request.POST)
    if form.is_valid():
        try:
            dataset = research.dataset_create(
                user=request.user, title=form.cleaned_data["title"], kinds=form.cleaned_data["kinds"]
            )
        except ValidationError as exc:
            form.add_error(None, _errors(exc))
        except PermissionDenied as exc:
            return forbidden(request, _errors(exc))
        else:
            messages.success(request, _("Dataset “%(title)s” created.") % {"title": dataset.title})
            return redirect("research_dataset", dataset_id=dataset.public_id)
    return render(request, "research/home.html", _home_context(request.user, form), status=400)


@role_required(Role.RESEARCHER)
@patient_data_gate
def research_dataset(request, dataset_id):
    dataset = research.dataset_get_for_user(request.user, dataset_id)
    context = {
        "dataset": dataset,
        "summary": research.dataset_summary(request.user, dataset),
        "exports": research.dataset_exports(dataset),
        "formats": ResearchExport.Format.choices,
        "k": research.deid.K,
    }
    return render(request, "research/dataset.html", context)


@require_POST
@role_required(Role.RESEARCHER)
@patient_data_gate
def research_dataset_export(request, dataset_id):
    dataset = research.dataset_get_for_user(request.user, dataset_id, action=AccessEvent.Action.EXPORT)
    fmt = request.POST.get("format", "")
    if fmt not in MEDIA_TYPES:
        messages.error(request, _("Choose CSV or FHIR."))
        return redirect("research_dataset", dataset_id=dataset.public_id)
    try:
        export, data = research.dataset_export(user=request.user, dataset=dataset, fmt=fmt)
    except PermissionDenied as exc:
        return forbidden(request, _errors(exc))
    media_type, extension = MEDIA_TYPES[fmt]
    filename = f"dataset-{str(dataset.public_id)[:8]}-{timezone.localdate(export.at):%Y%m%d}.{extension}"
    response = HttpResponse(data, content_type=media_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
