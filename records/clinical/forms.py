"""Forms for each kind of record, and how they turn into encrypted content.

Every form's ``content()`` returns the plain dict that is encrypted into the
version's document; ``initial_from(content)`` fills a form back from it for
drafts and amendments. Nothing here touches the database.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.forms import formset_factory
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from accounts.health_id import normalize
from accounts.services import patient_find
from chain.cluster import in_consortium
from records.consortium.cards import card_fetch
from records.models import RecordKind, Visit

TEXTAREA = forms.Textarea(attrs={"rows": 4})


class IsoDateInput(forms.DateInput):
    """A browser date picker. Its value is ISO 8601 whatever the page's language: Chrome drops a
    localised value such as ``2026/12/04``, and the form could not be submitted in Chinese."""

    input_type = "date"

    def __init__(self, attrs=None):
        super().__init__(attrs=attrs, format="%Y-%m-%d")


class IsoDateField(forms.DateField):
    widget = IsoDateInput
    input_formats = ["%Y-%m-%d"]


class VisitOpenForm(forms.Form):
    patient = forms.CharField(
        label=_("Patient"),
        max_length=254,
        help_text=_("The patient's Yilian ID (YL-…, shown in their portal, also as a QR code) or their email address."),
    )
    kind = forms.ChoiceField(label=_("Kind of visit"), choices=Visit.Kind.choices, initial=Visit.Kind.OUTPATIENT)
    card_code = forms.CharField(
        label=_("One-time code"),
        max_length=20,
        required=False,
        help_text=_(
            "Only for a patient registered at another hospital of the consortium: the code their portal "
            "shows under their Yilian ID. It lets this hospital receive their health card once."
        ),
    )

    def __init__(self, *args, clinician=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.clinician = clinician
        self.remote_id = None
        if not in_consortium():
            del self.fields["card_code"]

    def clean_patient(self):
        typed = self.cleaned_data["patient"]
        match = patient_find(typed)
        if match is None and "card_code" in self.fields and normalize(typed) is not None:
            self.remote_id = normalize(typed)  # perhaps registered at another node: the code decides
            return None
        if match is None:
            raise ValidationError(_("No patient with this Yilian ID or email address."), code="not_found")
        return match

    def clean(self):
        cleaned = super().clean()
        if self.remote_id is None or self.errors:
            return cleaned
        code = cleaned.get("card_code", "")
        if not code:
            self.add_error(
                "card_code",
                _(
                    "This Yilian ID is not registered at this hospital. If the patient is registered at another "
                    "hospital of the consortium, ask them for the one-time code in their portal and enter it here."
                ),
            )
            return cleaned
        try:
            cleaned["patient"] = card_fetch(health_id=self.remote_id, code=code, clinician=self.clinician)
        except ValidationError as exc:
            self.add_error("card_code", exc)
        return cleaned


class RecordBaseForm(forms.Form):
    title = forms.CharField(label=pgettext_lazy("record", "Title"), max_length=200)
    amendment_reason = forms.CharField(
        label=_("Reason for the amendment"),
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("Required when amending a finalised record; shown in the record's history."),
    )

    fields_in_content: tuple[str, ...] = ("title",)
    formset_class = None
    formset_key = ""

    def __init__(self, *args, amending: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.amending = amending
        if not amending:
            del self.fields["amendment_reason"]
        else:
            self.fields["amendment_reason"].required = True
        self.formset = None
        if self.formset_class is not None:
            initial = (kwargs.get("initial") or {}).get(self.formset_key)
            self.formset = self.formset_class(
                args[0] if args else kwargs.get("data"), prefix=self.formset_key, initial=initial
            )

    def is_valid(self) -> bool:
        valid = super().is_valid()
        if self.formset is not None:
            rows_valid = self.formset.is_valid()
            if rows_valid and not self._rows():
                self.add_error(None, self.empty_rows_message)
                rows_valid = False
            valid = valid and rows_valid
        return valid

    def _rows(self) -> list[dict]:
        """The filled rows: a blank row (the page always offers one) is not a row."""
        return [row for row in self.formset.cleaned_data if row and not row.get("DELETE")]

    empty_rows_message = ""

    def content(self) -> dict:
        data = {name: self.cleaned_data[name] for name in self.fields_in_content}
        if self.formset is not None:
            data[self.formset_key] = [{k: v for k, v in row.items() if k != "DELETE"} for row in self._rows()]
        return data

    @classmethod
    def bound_to(cls, content: dict, *, amending: bool = False, reason: str = "") -> RecordBaseForm:
        """The form bound to ``content`` as JSON gives it (the API), rows as the page would post them."""
        data = {name: content.get(name, "") for name in cls.fields_in_content}
        if amending:
            data["amendment_reason"] = reason
        if cls.formset_key:
            rows = content.get(cls.formset_key)
            rows = rows if isinstance(rows, list) else []
            data |= {f"{cls.formset_key}-TOTAL_FORMS": str(len(rows)), f"{cls.formset_key}-INITIAL_FORMS": "0"}
            for i, row in enumerate(rows):
                for name, value in (row if isinstance(row, dict) else {}).items():
                    data[f"{cls.formset_key}-{i}-{name}"] = value
        return cls({k: v if isinstance(v, str) else str(v) for k, v in data.items()}, amending=amending)

    def error_map(self) -> dict[str, list[str]]:
        """Every message, by field; a row's fields as ``medications[0].dose``."""
        errors = {("__all__" if k == "__all__" else k): [str(m) for m in v] for k, v in self.errors.items()}
        if self.formset is not None:
            for i, row in enumerate(self.formset.errors):
                for name, messages in row.items():
                    errors[f"{self.formset_key}[{i}].{name}"] = [str(m) for m in messages]
            if self.formset.non_form_errors():
                errors[self.formset_key] = [str(m) for m in self.formset.non_form_errors()]
        return errors

    @classmethod
    def initial_from(cls, content: dict) -> dict:
        initial = {name: content.get(name, "") for name in cls.fields_in_content}
        if cls.formset_key:
            initial[cls.formset_key] = content.get(cls.formset_key, [])
        return initial


class RowForm(forms.Form):
    """One row of a formset. A row whose text fields are all empty is blank and ignored,
    whatever its drop-downs show (they always have a value, so Django's "unchanged"
    test would treat a blank row as filled in and then ask for every field)."""

    def has_changed(self) -> bool:
        return any(
            (self[name].value() or "").strip()
            for name, field in self.fields.items()
            if isinstance(field, forms.CharField) and name != "DELETE"
        )


class BlankRowsFormSet(forms.BaseFormSet):
    def get_form_kwargs(self, index):
        # Every row may be left blank, not only the extra one: a doctor may clear a row instead of ticking Remove.
        return {**super().get_form_kwargs(index), "empty_permitted": True, "use_required_attribute": False}


class MedicationForm(RowForm):
    name = forms.CharField(label=_("Medication"), max_length=200)
    dose = forms.CharField(label=_("Dose"), max_length=60, help_text=_("e.g. 500 mg"))
    route = forms.ChoiceField(
        label=_("Route"),
        choices=[
            ("oral", _("Oral")),
            ("iv", _("Intravenous")),
            ("im", _("Intramuscular")),
            ("sc", _("Subcutaneous")),
            ("topical", _("Topical")),
            ("inhaled", _("Inhaled")),
            ("other", _("Other")),
        ],
    )
    frequency = forms.CharField(label=_("Frequency"), max_length=60, help_text=_("e.g. twice daily"))
    duration = forms.CharField(label=_("Duration"), max_length=60, help_text=_("e.g. 7 days"))


class ObservationForm(RowForm):
    name = forms.CharField(label=_("Test"), max_length=200)
    value = forms.CharField(label=_("Value"), max_length=60)
    unit = forms.CharField(label=_("Unit"), max_length=30, required=False)
    reference_range = forms.CharField(label=_("Reference range"), max_length=60, required=False)
    flag = forms.ChoiceField(
        label=_("Flag"),
        choices=[("normal", _("Normal")), ("high", _("High")), ("low", _("Low")), ("abnormal", _("Abnormal"))],
        initial="normal",
    )


MedicationFormSet = formset_factory(
    MedicationForm, formset=BlankRowsFormSet, extra=1, can_delete=True, max_num=30, validate_max=True
)
ObservationFormSet = formset_factory(
    ObservationForm, formset=BlankRowsFormSet, extra=1, can_delete=True, max_num=100, validate_max=True
)


class PrescriptionForm(RecordBaseForm):
    instructions = forms.CharField(label=_("Instructions for the patient"), required=False, widget=TEXTAREA)
    fields_in_content = ("title", "instructions")
    formset_class = MedicationFormSet
    formset_key = "medications"
    empty_rows_message = _("Add at least one medication.")


class LabReportForm(RecordBaseForm):
    specimen = forms.CharField(label=_("Specimen"), max_length=120, help_text=_("e.g. venous blood"))
    comment = forms.CharField(label=_("Comment"), required=False, widget=TEXTAREA)
    fields_in_content = ("title", "specimen", "comment")
    formset_class = ObservationFormSet
    formset_key = "observations"
    empty_rows_message = _("Add at least one observation.")


class PathologyForm(RecordBaseForm):
    specimen = forms.CharField(label=_("Specimen"), max_length=200)
    diagnosis = forms.CharField(label=_("Diagnosis"), max_length=500)
    findings = forms.CharField(label=_("Findings"), widget=TEXTAREA)
    fields_in_content = ("title", "specimen", "diagnosis", "findings")


IMAGING_MODALITIES = {
    "MR": _("MRI"),
    "CT": _("CT"),
    "CR": _("X-ray"),
    "US": _("Ultrasound"),
    "PT": _("PET"),
    "MG": _("Mammography"),
    "OT": _("Other"),
}
"""DICOM modality codes (what the content and FHIR store) and what people read for them."""


class ImagingForm(RecordBaseForm):
    modality = forms.ChoiceField(label=_("Modality"), choices=list(IMAGING_MODALITIES.items()))
    body_site = forms.CharField(label=_("Body site"), max_length=120)
    findings = forms.CharField(label=_("Findings"), widget=TEXTAREA)
    impression = forms.CharField(label=_("Impression"), required=False, widget=TEXTAREA)
    fields_in_content = ("title", "modality", "body_site", "findings", "impression")


class NoteForm(RecordBaseForm):
    text = forms.CharField(label=_("Note"), widget=forms.Textarea(attrs={"rows": 10}))
    fields_in_content = ("title", "text")


class DocumentForm(RecordBaseForm):
    description = forms.CharField(label=_("Description"), required=False, widget=TEXTAREA)
    fields_in_content = ("title", "description")


FORMS_BY_KIND: dict[str, type[RecordBaseForm]] = {
    RecordKind.PRESCRIPTION: PrescriptionForm,
    RecordKind.LAB_REPORT: LabReportForm,
    RecordKind.PATHOLOGY: PathologyForm,
    RecordKind.IMAGING: ImagingForm,
    RecordKind.NOTE: NoteForm,
    RecordKind.DOCUMENT: DocumentForm,
}
CLINICIAN_KINDS = [k for k in RecordKind if k != RecordKind.DOCUMENT]
