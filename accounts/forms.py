from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from accounts.models import Institution, Role

SIGNUP_ROLES = [
    (Role.PATIENT, _("Patient: I want to see and share my own records")),
    (Role.CLINICIAN, _("Doctor or nurse at an institution")),
    (Role.RESEARCHER, _("Researcher at a research institute")),
]


class SignupExtraForm(forms.Form):
    """Extra sign-up fields; allauth calls ``signup`` after creating the user."""

    name = forms.CharField(label=_("Full name"), max_length=150)
    role = forms.ChoiceField(label=_("I am a"), choices=SIGNUP_ROLES, initial=Role.PATIENT, widget=forms.RadioSelect)
    institution = forms.ModelChoiceField(
        label=_("Institution"),
        queryset=Institution.objects.all(),
        required=False,
        help_text=_("Staff only. Your institution's administrator verifies you before you can see any patient data."),
    )
    staff_title = forms.CharField(
        label=pgettext_lazy("job", "Title"),
        max_length=100,
        required=False,
        help_text=_("For example: attending physician."),
    )

    def clean(self):
        data = super().clean()
        role = data.get("role")
        institution = data.get("institution")
        if role == Role.RESEARCHER and institution and institution.kind != Institution.Kind.RESEARCH:
            self.add_error("institution", _("Researchers belong to a research institute."))
        if role in (Role.CLINICIAN, Role.RESEARCHER) and institution is None:
            self.add_error("institution", _("Choose the institution you work for."))
        if role == Role.CLINICIAN and institution and institution.kind == Institution.Kind.RESEARCH:
            self.add_error("institution", _("Clinicians belong to a hospital or clinic."))
        return data

    def signup(self, request, user):
        # The adapter has already set everything; nothing more to save.
        return user
