"""The grant wizard's form, the doctor's access request and the patient's approval."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from accounts.health_id import normalize
from accounts.models import Institution, Role, User
from accounts.services import doctors_find, patient_find
from chain.cluster import in_consortium
from records.clinical.forms import IsoDateField
from records.models import BreakGlass, BreakGlassReason, GrantPurpose, GrantScope, MedicalRecord, RecordKind

DEFAULT_DAYS = 30


# An emergency grant is issued by the patient's home node for break-glass across nodes, never chosen.
CHOSEN_PURPOSES = [(value, label) for value, label in GrantPurpose.choices if value != GrantPurpose.EMERGENCY]


class GrantForm(forms.Form):
    grantee_kind = forms.ChoiceField(
        label=_("Share with"),
        choices=[("user", _("A doctor")), ("institution", _("A whole institution"))],
        widget=forms.RadioSelect,
        initial="user",
    )
    grantee_query = forms.CharField(
        label=_("Find your doctor"),
        max_length=100,
        required=False,
        help_text=_("Their name and hospital, for example “Li Renmin Hospital”. Only verified doctors are listed."),
    )
    grantee_choice = forms.ChoiceField(label=_("Doctor"), required=False, choices=(), widget=forms.RadioSelect)
    grantee_email = forms.EmailField(
        label=_("Or their email address"),
        required=False,
        help_text=_("The address your doctor signs in with. Only verified staff of an institution can be chosen."),
    )
    grantee_institution = forms.ModelChoiceField(
        label=_("Institution"),
        queryset=Institution.objects.order_by("code"),
        to_field_name="code",
        required=False,
        help_text=_("Its verified staff with two-factor sign-in can read; researchers only for research."),
    )
    scope = forms.ChoiceField(
        label=_("What to share"), choices=GrantScope.choices, widget=forms.RadioSelect, initial=GrantScope.ALL
    )
    kinds = forms.MultipleChoiceField(
        label=_("Kinds of record"), choices=RecordKind.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    records = forms.MultipleChoiceField(
        label=pgettext_lazy("which records to share", "Records"),
        choices=(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    purpose = forms.ChoiceField(label=_("Purpose"), choices=CHOSEN_PURPOSES, initial=GrantPurpose.TREATMENT)
    valid_from = IsoDateField(label=_("From"))
    valid_until = IsoDateField(
        label=_("Until (inclusive)"),
        help_text=_("Access ends by itself at the end of this day."),
    )
    include_sensitive = forms.BooleanField(
        label=_("Also share records I marked sensitive"),
        required=False,
        help_text=_("Otherwise sensitive records are shared only when you choose them one by one below."),
    )

    def __init__(self, *args, patient, record_titles: list[tuple[MedicalRecord, str]], query=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.patient = patient
        if query is None:
            query = self.data.get("grantee_query") if self.is_bound else ""
        query = (query or "").strip()
        self.doctors_found = doctors_find(query) if query else []
        self.searched = bool(query)
        self.fields["grantee_choice"].choices = [
            (str(d.public_id), f"{d.display_name} · {d.institution.display_name}") for d in self.doctors_found
        ]
        self._records = {str(r.public_id): r for r, _title in record_titles}
        self.fields["records"].choices = [
            (
                str(r.public_id),
                f"{title or r.get_kind_display()} · {r.created_at:%Y-%m-%d}"
                + (f" · {_('sensitive')}" if r.sensitive else ""),
            )
            for r, title in record_titles
        ]
        today = timezone.localdate()
        self.fields["valid_from"].initial = today
        self.fields["valid_until"].initial = today + timedelta(days=DEFAULT_DAYS)

    def clean(self):
        data = super().clean()
        if data.get("grantee_kind") == "user":
            data["grantee_user"], data["grantee_institution"] = self._chosen_doctor(data), None
        elif data.get("grantee_kind") == "institution":
            if data.get("grantee_institution") is None:
                self.add_error("grantee_institution", _("Choose an institution."))
            data["grantee_user"] = None
        scope = data.get("scope")
        if scope == GrantScope.KINDS and not data.get("kinds"):
            self.add_error("kinds", _("Choose at least one kind of record."))
        if scope == GrantScope.RECORDS and not data.get("records"):
            self.add_error("records", _("Choose at least one record."))
        data["record_objects"] = [self._records[i] for i in data.get("records") or [] if i in self._records]
        start, end = data.get("valid_from"), data.get("valid_until")
        today = timezone.localdate()
        if start and start < today:
            self.add_error("valid_from", _("The start cannot be in the past."))
        if start and end and end < start:
            self.add_error("valid_until", _("The end must be on or after the start."))
        elif end and end < today:
            self.add_error("valid_until", _("The end cannot be in the past."))
        if start and end and not self.errors:
            tz = timezone.get_current_timezone()
            now = timezone.now()
            begin = datetime.combine(start, time.min, tzinfo=tz)
            data["valid_from_at"] = now if start == today else begin
            data["valid_until_at"] = datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz)
        return data

    def _chosen_doctor(self, data):
        """The doctor picked from the search results or found by email; else a field error."""
        chosen = data.get("grantee_choice")
        if chosen:
            return next(d for d in self.doctors_found if str(d.public_id) == chosen)
        email = (data.get("grantee_email") or "").lower()
        if email:
            doctor = (
                User.objects.filter(email=email, role__in=[Role.CLINICIAN, Role.RESEARCHER])
                .select_related("institution")
                .first()
            )
            if doctor is None or not doctor.is_verified_staff:
                self.add_error("grantee_email", _("No verified doctor signs in with this email address."))
                return None
            return doctor
        if self.doctors_found:  # even a single match: the patient sees whom they share with first
            self.add_error("grantee_choice", _("Choose your doctor from the list."))
        elif self.searched:
            message = _("No verified doctor matches. Try their name and hospital, or their email.")
            self.add_error("grantee_query", message)
        else:
            self.add_error("grantee_query", _("Find your doctor by name and hospital, or give their email address."))
        return None


class AccessRequestForm(forms.Form):
    """A doctor asks a patient for access (the clinic's Patients page)."""

    patient = forms.CharField(
        label=_("Patient"),
        max_length=254,
        help_text=_("The patient's Yilian ID or their email address."),
    )
    scope = forms.ChoiceField(
        label=_("What you ask to see"),
        choices=[(GrantScope.ALL, _("All their records")), (GrantScope.KINDS, _("Some kinds of record"))],
        widget=forms.RadioSelect,
        initial=GrantScope.ALL,
    )
    kinds = forms.MultipleChoiceField(
        label=_("Kinds of record"), choices=RecordKind.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    purpose = forms.ChoiceField(label=_("Purpose"), choices=CHOSEN_PURPOSES, initial=GrantPurpose.TREATMENT)
    reason = forms.CharField(
        label=_("Reason"),
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("Only the patient and you can read it; it is stored encrypted."),
    )
    days = forms.IntegerField(label=_("For how many days"), min_value=1, max_value=365, initial=DEFAULT_DAYS)

    def clean_patient(self):
        """The patient, or None when nobody answers to it: the form must not tell which."""
        typed = self.cleaned_data["patient"].strip()
        self.asked_as = typed
        return patient_find(typed)

    def clean(self):
        data = super().clean()
        if data.get("scope") == GrantScope.KINDS and not data.get("kinds"):
            self.add_error("kinds", _("Choose at least one kind of record."))
        return data


class RequestApproveForm(forms.Form):
    valid_until = IsoDateField(
        label=_("Until (inclusive)"),
        help_text=_("Access ends by itself at the end of this day."),
    )

    def clean_valid_until(self):
        end = self.cleaned_data["valid_until"]
        if end < timezone.localdate():
            raise forms.ValidationError(_("The end cannot be in the past."))
        return end

    def valid_until_at(self):
        tz = timezone.get_current_timezone()
        return datetime.combine(self.cleaned_data["valid_until"] + timedelta(days=1), time.min, tzinfo=tz)


class BreakGlassForm(forms.Form):
    """Emergency access: who, why (a kind plus the clinician's own words), how long, and re-authentication."""

    patient = forms.CharField(
        label=_("Patient"),
        max_length=254,
        help_text=_("The patient's Yilian ID or their email address."),
    )
    reason = forms.ChoiceField(label=_("Kind of emergency"), choices=BreakGlassReason.choices, widget=forms.RadioSelect)
    detail = forms.CharField(
        label=_("What is happening"),
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("Read by the patient and by your institution's reviewers; stored encrypted."),
    )
    hours = forms.IntegerField(
        label=_("For how many hours"),
        min_value=1,
        max_value=12,
        initial=4,
        help_text=_("Access ends by itself after this time. Four hours unless you need longer."),
    )
    credential = forms.CharField(
        label=_("Your password or authenticator code"),
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text=_("Confirm it is you: enter your password, or the 6-digit code from your authenticator app."),
    )

    def clean_patient(self):
        """A patient here; or, in a consortium, a valid Yilian ID of someone registered at another node (a str)."""
        typed = self.cleaned_data["patient"]
        match = patient_find(typed)
        if match is not None and match.is_remote:
            return match.health_id  # their home node releases their records, whoever holds their card here
        if match is None and in_consortium() and normalize(typed) is not None:
            return normalize(typed)
        if match is None:
            raise ValidationError(_("No patient with this Yilian ID or email address."), code="not_found")
        return match


class BreakGlassReviewForm(forms.Form):
    review = forms.ChoiceField(
        label=_("Was the access justified?"), choices=BreakGlass.Review.choices, widget=forms.RadioSelect
    )
    note = forms.CharField(
        label=_("Review note"),
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("Required when the access was not justified. Do not write clinical details here."),
    )

    def clean(self):
        data = super().clean()
        if data.get("review") == BreakGlass.Review.NOT_JUSTIFIED and not (data.get("note") or "").strip():
            self.add_error("note", _("Say what was wrong: the note is required when access was not justified."))
        return data
