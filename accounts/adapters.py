"""allauth adapter: new accounts get their keys, their role and their key registration on sign-up."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction
from django.urls import reverse
from django.utils.translation import get_language

from accounts.keys import issue_keys
from accounts.ledger import key_registration_submit


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user = super().save_user(request, user, form, commit=False)
        data = form.cleaned_data
        user.email = user.email.lower()
        user.name = data.get("name", "")
        user.role = data.get("role") or "patient"
        user.institution = data.get("institution") if user.role != "patient" else None
        user.staff_title = data.get("staff_title", "") if user.role != "patient" else ""
        user.language = get_language() or ""
        issue_keys(user)
        if commit:
            with transaction.atomic():  # the account and its key registration together
                user.save()
                key_registration_submit(user, kind="user")
        return user

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        from django.conf import settings

        super().send_mail(template_prefix, email, {"site_url": settings.SITE_URL, **context})

    def get_login_redirect_url(self, request):
        return reverse("home")
