"""Django admin for accounts.

Institution admins see and verify only their own institution's staff; the
verify action calls the same service as the portal page.
"""

from __future__ import annotations

from allauth.mfa.utils import is_mfa_enabled
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from accounts.keys import issue_keys
from accounts.ledger import key_registration_submit
from accounts.models import Institution, Role, User
from accounts.services import staff_verify


def _is_institution_admin(request) -> bool:
    user = request.user
    return user.is_active and user.is_staff and user.role == Role.INSTITUTION_ADMIN and user.is_verified_staff


def _may_verify(request) -> bool:
    """Verifying staff decides who reaches patient data: 2FA is required for it."""
    return (request.user.is_superuser or _is_institution_admin(request)) and is_mfa_enabled(request.user)


class InstitutionScopedMixin:
    """Institution admins get view/change rights limited to their institution."""

    def has_module_permission(self, request):
        return super().has_module_permission(request) or _is_institution_admin(request)

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or _is_institution_admin(request)


@admin.register(Institution)
class InstitutionAdmin(InstitutionScopedMixin, admin.ModelAdmin):
    list_display = ("code", "name", "name_en", "kind", "city")
    list_filter = ("kind",)
    search_fields = ("code", "name", "name_en")
    readonly_fields = ("public_id", "created_at")

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if not request.user.is_superuser and request.user.role == Role.INSTITUTION_ADMIN:
            return qs.filter(pk=request.user.institution_id)
        return qs

    def save_model(self, request, obj, form, change):
        new = not obj.has_keys
        if new:
            issue_keys(obj)
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if new:
                key_registration_submit(obj, kind="institution")


@admin.register(User)
class UserAdmin(InstitutionScopedMixin, BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "name", "role", "institution", "verified_at", "is_active")
    list_filter = ("role", "institution", ("verified_at", admin.EmptyFieldListFilter), "is_active")
    search_fields = ("email", "name", "name_en")
    readonly_fields = ("public_id", "verified_at", "verified_by", "date_joined", "last_login")
    actions = ["verify_staff"]
    fieldsets = (
        (None, {"fields": ("email", "password", "public_id")}),
        (_("Person"), {"fields": ("name", "name_en", "role", "institution", "staff_title")}),
        (_("Verification"), {"fields": ("verified_at", "verified_by")}),
        (_("Permissions"), {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        (_("Dates"), {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "role", "institution", "password1", "password2")}),
    )

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("institution")
        if not request.user.is_superuser and request.user.role == Role.INSTITUTION_ADMIN:
            return qs.filter(institution_id=request.user.institution_id).exclude(role=Role.PATIENT)
        return qs

    def get_actions(self, request):
        actions = super().get_actions(request)
        if _is_institution_admin(request):
            # Institution admins verify; they do not delete people.
            actions.pop("delete_selected", None)
        return actions

    def has_verify_staff_permission(self, request):
        return _may_verify(request)

    def save_model(self, request, obj, form, change):
        new = not obj.has_keys
        if new:
            issue_keys(obj)
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if new:
                key_registration_submit(obj, kind="user")

    @admin.action(description=_("Verify selected staff"), permissions=["verify_staff"])
    def verify_staff(self, request, queryset):
        done = 0
        for member in queryset:
            try:
                staff_verify(verifier=request.user, member=member)
                done += 1
            except PermissionDenied:
                self.message_user(
                    request,
                    _("Skipped %(email)s: not your institution's staff.") % {"email": member.email},
                    messages.WARNING,
                )
        self.message_user(
            request, ngettext("%(count)d account verified.", "%(count)d accounts verified.", done) % {"count": done}
        )
